"""compare: what two archives (Orthanc servers or DICOM nodes) hold, at study, series or instance level."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pacsflow.config import ModalityConfig
from pacsflow.dimse import find
from pacsflow.errors import ConfigError, NotFound
from pacsflow.orthanc import Orthanc, orthanc_id
from pacsflow.roster import atomic_write

LEVELS = {"study": "studies", "series": "series", "instance": "instances"}
#: the DICOM identities the CSV gives beside each Orthanc ID, by level (a person looks studies up by
#: these, not by Orthanc's hashes)
STUDY_TAGS = ("PatientID", "StudyInstanceUID", "StudyDate", "StudyDescription")
SERIES_TAGS = ("SeriesInstanceUID", "Modality", "SeriesDescription")
TAGS = {
    "study": STUDY_TAGS,
    "series": STUDY_TAGS + SERIES_TAGS,
    "instance": STUDY_TAGS + SERIES_TAGS + ("SOPInstanceUID",),
}


@dataclass(frozen=True)
class Difference:
    """One resource that is only on one side, or on both with other instance counts."""

    level: str
    resource: str
    where: str  # "only-a", "only-b" or "count-differs"
    count_a: int
    count_b: int


class Holdings(dict[str, int]):
    """What one side holds at a level: resource ID -> number of instances; `tags` holds, for a DICOM node,
    the tags its C-FIND answered with (a server's are looked up later, for the differences only)."""

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        super().__init__(counts or {})
        self.tags: dict[str, dict[str, str]] = {}


def holdings(server: Orthanc, level: str, query: dict[str, str] | None) -> Holdings:
    """Resource ID -> number of instances, for every resource at LEVEL (optionally matching QUERY).

    Raises ConfigError for an unknown level, or what the server's answers raise.
    """
    if level not in LEVELS:
        raise ConfigError(f"--level {level!r}: use study, series or instance")
    if level == "instance":
        ids = server.find("Instance", query) if query else server.ids("instances")
        return Holdings(dict.fromkeys(ids, 1))
    plural = LEVELS[level]
    ids = server.find(level.capitalize(), query) if query else server.ids(plural)
    return Holdings({resource: len(server.instance_ids_of(plural, resource)) for resource in ids})


def node_holdings(node: ModalityConfig, our_aet: str, level: str, query: dict[str, str] | None) -> Holdings:
    """The same for a DICOM node, by C-FIND; keys are the Orthanc IDs its UIDs give, so the two compare.

    Raises ConfigError for an unknown level or a query a node cannot answer, Unreachable or RemoteError
    when the node does not answer or fails the C-FIND.
    """
    if level not in LEVELS:
        raise ConfigError(f"--level {level!r}: use study, series or instance")
    unsupported = set(query or {}) - {"StudyDate", "PatientID", "AccessionNumber", "ModalitiesInStudy"}
    if unsupported:
        raise ConfigError(
            f"a DICOM node is queried by StudyDate, PatientID, AccessionNumber only, not {unsupported}"
        )
    study_keys = {
        **dict.fromkeys(STUDY_TAGS, ""),
        "NumberOfStudyRelatedInstances": "",
        **(query or {}),
    }
    studies = find(node, our_aet, "STUDY", study_keys)
    held = Holdings()
    for study in studies:
        patient, study_uid = study["PatientID"], study["StudyInstanceUID"]
        tags = {tag: study[tag] for tag in STUDY_TAGS}
        if level == "study":
            key = orthanc_id(patient, study_uid)
            held[key], held.tags[key] = int(study["NumberOfStudyRelatedInstances"] or 0), tags
            continue
        if level == "series":
            keys = {
                "StudyInstanceUID": study_uid,
                **dict.fromkeys(SERIES_TAGS, ""),
                "NumberOfSeriesRelatedInstances": "",
            }
            for series in find(node, our_aet, "SERIES", keys):
                key = orthanc_id(patient, study_uid, series["SeriesInstanceUID"])
                held[key] = int(series["NumberOfSeriesRelatedInstances"] or 0)
                held.tags[key] = {**tags, **{tag: series[tag] for tag in SERIES_TAGS}}
            continue
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "SOPInstanceUID": ""}
        for image in find(node, our_aet, "IMAGE", keys):
            key = orthanc_id(patient, study_uid, image["SeriesInstanceUID"], image["SOPInstanceUID"])
            held[key] = 1
            held.tags[key] = {
                **tags,
                "SeriesInstanceUID": image["SeriesInstanceUID"],
                "SOPInstanceUID": image["SOPInstanceUID"],
            }
    return held


def compare(a: dict[str, int], b: dict[str, int], level: str) -> list[Difference]:
    """What differs between two holdings, in a stable order: only in A, only in B, counts that differ."""
    differences = [Difference(level, key, "only-a", a[key], 0) for key in sorted(a.keys() - b.keys())]
    differences += [Difference(level, key, "only-b", 0, b[key]) for key in sorted(b.keys() - a.keys())]
    differences += [
        Difference(level, key, "count-differs", a[key], b[key])
        for key in sorted(a.keys() & b.keys())
        if a[key] != b[key]
    ]
    return differences


def summary(
    differences: Iterable[Difference], level: str, sizes: tuple[int, int], filtered: bool = False
) -> str:
    """One line: how many each side holds and how many differ, by kind; or, when neither side holds
    anything (that FILTERED, a query or dates, let through), that nothing was compared."""
    noun = "series" if level == "series" else f"{level}s" if level != "study" else "studies"
    if sizes == (0, 0):
        what = "match the query and dates on either side" if filtered else "on either side"
        return f"{noun}: none {what}; nothing was compared"
    counts = {"only-a": 0, "only-b": 0, "count-differs": 0}
    for difference in differences:
        counts[difference.where] += 1
    return (
        f"{noun}: A has {sizes[0]}, B has {sizes[1]}; only in A {counts['only-a']}, only in B "
        f"{counts['only-b']}, instance counts differ {counts['count-differs']}"
    )


class ServerTags:
    """The DICOM identities of a server's resources, looked up one by one and their parents cached: the
    CSV needs them for the differences only, usually a few of many."""

    def __init__(self, server: Orthanc) -> None:
        self.server = server
        self._cache: dict[tuple[str, str], dict[str, str]] = {}

    def __call__(self, level: str, resource: str) -> dict[str, str]:
        """Tags of RESOURCE at LEVEL (study, series, instance) and of its parents; {} when it is gone.
        Raises what the server's answers raise, but NotFound."""
        if not resource:  # a parent Orthanc did not name
            return {}
        if (level, resource) in self._cache:
            return self._cache[level, resource]
        try:
            info = self.server.resource(LEVELS[level], resource)
        except NotFound:
            return {}
        own = info.get("MainDicomTags", {})
        if level == "study":
            tags = {**info.get("PatientMainDicomTags", {}), **own}
            tags = {tag: str(tags.get(tag, "")) for tag in STUDY_TAGS}
        elif level == "series":
            tags = {
                **self("study", info.get("ParentStudy", "")),
                **{t: str(own.get(t, "")) for t in SERIES_TAGS},
            }
        else:
            tags = {
                **self("series", info.get("ParentSeries", "")),
                "SOPInstanceUID": str(own.get("SOPInstanceUID", "")),
            }
        self._cache[level, resource] = tags
        return tags


def write_csv(
    path: Path,
    differences: list[Difference],
    level: str | None = None,
    tags: Callable[[Difference], Mapping[str, str]] | None = None,
) -> None:
    """The differences as CSV, with the DICOM identities TAGS gives for each (PatientID, UIDs, date and
    description) after the Orthanc IDs when LEVEL is given. Mode 0600: it names patients. Raises
    OSError, and what TAGS raises."""
    columns = TAGS[level] if level in TAGS and tags is not None else ()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["level", "orthanc_id", "where", "instances_a", "instances_b", *columns])
    for difference in differences:
        known = tags(difference) if columns and tags is not None else {}
        writer.writerow(
            [
                difference.level,
                difference.resource,
                difference.where,
                difference.count_a,
                difference.count_b,
                *(known.get(column, "") for column in columns),
            ]
        )
    atomic_write(path, buffer.getvalue().encode(), mode=0o600)


def studies_to_copy(source: Orthanc, differences: list[Difference]) -> list[str]:
    """The studies of A that B lacks in whole or in part. Raises what the server's answers raise
    (NotFound for a series or instance gone from A meanwhile)."""
    studies: set[str] = set()
    for difference in differences:
        if difference.where == "only-b":
            continue  # nothing of A to send (a transfer copies only what B lacks anyway)
        if difference.level == "study":
            studies.add(difference.resource)
        elif difference.level == "series":
            studies.add(source.resource("series", difference.resource)["ParentStudy"])
        else:
            studies.add(source.get_json(f"/instances/{difference.resource}/study")["ID"])
    return sorted(studies)
