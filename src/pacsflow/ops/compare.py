"""compare: what two archives (Orthanc servers or DICOM nodes) hold, at study, series or instance level."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pacsflow.config import ModalityConfig
from pacsflow.dimse import find
from pacsflow.errors import ConfigError
from pacsflow.orthanc import Orthanc, orthanc_id
from pacsflow.roster import atomic_write

LEVELS = {"study": "studies", "series": "series", "instance": "instances"}


@dataclass(frozen=True)
class Difference:
    """One resource that is only on one side, or on both with other instance counts."""

    level: str
    resource: str
    where: str  # "only-a", "only-b" or "count-differs"
    count_a: int
    count_b: int


def holdings(server: Orthanc, level: str, query: dict[str, str] | None) -> dict[str, int]:
    """Resource ID -> number of instances, for every resource at LEVEL (optionally matching QUERY).

    Raises ConfigError for an unknown level, or what the server's answers raise.
    """
    if level not in LEVELS:
        raise ConfigError(f"--level {level!r}: use study, series or instance")
    if level == "instance":
        ids = server.find("Instance", query) if query else server.ids("instances")
        return dict.fromkeys(ids, 1)
    plural = LEVELS[level]
    ids = server.find(level.capitalize(), query) if query else server.ids(plural)
    return {resource: len(server.instance_ids_of(plural, resource)) for resource in ids}


def node_holdings(
    node: ModalityConfig, our_aet: str, level: str, query: dict[str, str] | None
) -> dict[str, int]:
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
        "PatientID": "",
        "StudyInstanceUID": "",
        "NumberOfStudyRelatedInstances": "",
        **(query or {}),
    }
    studies = find(node, our_aet, "STUDY", study_keys)
    held: dict[str, int] = {}
    for study in studies:
        patient, study_uid = study["PatientID"], study["StudyInstanceUID"]
        if level == "study":
            held[orthanc_id(patient, study_uid)] = int(study["NumberOfStudyRelatedInstances"] or 0)
            continue
        if level == "series":
            keys = {
                "StudyInstanceUID": study_uid,
                "SeriesInstanceUID": "",
                "NumberOfSeriesRelatedInstances": "",
            }
            for series in find(node, our_aet, "SERIES", keys):
                count = int(series["NumberOfSeriesRelatedInstances"] or 0)
                held[orthanc_id(patient, study_uid, series["SeriesInstanceUID"])] = count
            continue
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "SOPInstanceUID": ""}
        for image in find(node, our_aet, "IMAGE", keys):
            held[orthanc_id(patient, study_uid, image["SeriesInstanceUID"], image["SOPInstanceUID"])] = 1
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


def summary(differences: Iterable[Difference], level: str, sizes: tuple[int, int]) -> str:
    """One line: how many each side holds and how many differ, by kind."""
    counts = {"only-a": 0, "only-b": 0, "count-differs": 0}
    for difference in differences:
        counts[difference.where] += 1
    noun = "series" if level == "series" else f"{level}s" if level != "study" else "studies"
    return (
        f"{noun}: A has {sizes[0]}, B has {sizes[1]}; only in A {counts['only-a']}, only in B "
        f"{counts['only-b']}, instance counts differ {counts['count-differs']}"
    )


def write_csv(path: Path, differences: list[Difference]) -> None:
    """The differences as CSV (mode 0600: Orthanc IDs are derived from patient IDs). Raises OSError."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["level", "orthanc_id", "where", "instances_a", "instances_b"])
    for difference in differences:
        writer.writerow(
            [difference.level, difference.resource, difference.where, difference.count_a, difference.count_b]
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
