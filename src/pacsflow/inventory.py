"""Series inventories: one row per series (identities, expected and present instances, size, status),
read from an Orthanc server or from a download or retrieve run's ledger records, written as a private CSV."""

# The seed's inventory generator and slice check (seed 004, R10) in one place, so that the CLI, the web
# app, `validate` and the download operation count and word a series alike. Light at import time: no
# httpx or pydicom here (the server is passed in, the CSV writer is imported when it writes).

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacsflow.errors import ConfigError, NotFound
from pacsflow.wording import plural

if TYPE_CHECKING:
    from pacsflow.api import Pacsflow
    from pacsflow.ledger import Ledger
    from pacsflow.orthanc import Orthanc
    from pacsflow.selection import Selection

log = logging.getLogger("pacsflow")

COMPLETE, INCOMPLETE, EXTRA, UNKNOWN = "complete", "incomplete", "extra", "unknown"
#: a verdict of validate only: as many instances as expected, but Orthanc finds their numbers wrong
#: (an InstanceNumber beyond the expected count, or twice the same): something else is missing
INCONSISTENT = "inconsistent"
#: verdicts that make `validate` (and a download's check) fail
MISMATCHES = (INCOMPLETE, EXTRA, INCONSISTENT)
#: the CSV's columns, in order (seed 004's inventory, plus where each series is on the server)
COLUMNS = (
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "SeriesDescription",
    "expected_instances",
    "present_instances",
    "size_bytes",
    "status",
    "orthanc_study",
    "orthanc_series",
)
STUDY_TAGS = ("StudyInstanceUID", "StudyDate", "StudyDescription", "AccessionNumber")
PATIENT_TAGS = ("PatientID", "PatientName")
SERIES_TAGS = ("SeriesInstanceUID", "SeriesNumber", "Modality", "SeriesDescription")
#: the kinds of a download run's items this module reads (the download operation's contract)
RUN_STUDY, RUN_INSTANCE, RUN_ARCHIVE = "study", "instance", "archive"
#: the kind of a retrieve run's series items (the retrieve operation's contract)
RUN_SERIES = "series"


@dataclass(frozen=True)
class SeriesRow:
    """One series of an inventory. DICOM values keep their keywords as names (the CSV's columns and the
    download run's records spell them so); EXPECTED_INSTANCES is None when no count is known."""

    PatientID: str = ""
    PatientName: str = ""
    StudyInstanceUID: str = ""
    StudyDate: str = ""
    StudyDescription: str = ""
    AccessionNumber: str = ""
    SeriesInstanceUID: str = ""
    SeriesNumber: str = ""
    Modality: str = ""
    SeriesDescription: str = ""
    expected_instances: int | None = None
    present_instances: int = 0
    size_bytes: int | None = None
    orthanc_study: str = ""
    orthanc_series: str = ""
    #: Orthanc's own verdict on the series (Complete, Missing, Inconsistent, Unknown), when read there
    orthanc_status: str | None = None

    @property
    def status(self) -> str:
        """complete, incomplete, extra (more instances than expected) or unknown (no expected count)."""
        if self.expected_instances is None:
            return UNKNOWN
        if self.present_instances == self.expected_instances:
            return COMPLETE
        return INCOMPLETE if self.present_instances < self.expected_instances else EXTRA

    @property
    def verdict(self) -> str:
        """STATUS, or inconsistent when the counts agree but Orthanc says the instances' numbers do not."""
        if self.status == COMPLETE and self.orthanc_status == "Inconsistent":
            return INCONSISTENT
        return self.status

    @property
    def mismatch(self) -> bool:
        return self.verdict in MISMATCHES

    def cells(self) -> list[Any]:
        """The CSV's cells, in COLUMNS order; an unknown count or size is an empty cell."""
        return ["" if value is None else value for value in (getattr(self, name) for name in COLUMNS)]

    def label(self, log_phi: bool = False) -> str:
        """How a line names the series: by study UID, series number, modality and description; its
        patient (ID and name) only with LOG_PHI."""
        text = (
            f"study {self.StudyInstanceUID or self.orthanc_study} series {self.SeriesNumber or '?'} "
            f"{self.Modality or '?'} {self.SeriesDescription!r}"
        )
        if log_phi:
            return f"patient {self.PatientID} ({self.PatientName}) {text}"
        return text

    def problem(self) -> str:
        """What is wrong with the counts, in words ('' when nothing is)."""
        expected, present = self.expected_instances, self.present_instances
        verdict = self.verdict
        if verdict == INCOMPLETE:
            assert expected is not None
            return f"{present} of {expected} instances ({expected - present} missing)"
        if verdict == EXTRA:
            return f"{present} instances where {expected} were expected"
        if verdict == INCONSISTENT:
            return (
                f"{present} of {expected} instances, but their numbers do not run from 1 to {expected} "
                "(Orthanc: Inconsistent)"
            )
        return ""


def counted(rows: Iterable[SeriesRow]) -> dict[str, int]:
    """How many ROWS have each verdict (complete, incomplete, extra, inconsistent, unknown)."""
    found = dict.fromkeys((COMPLETE, INCOMPLETE, EXTRA, INCONSISTENT, UNKNOWN), 0)
    for row in rows:
        found[row.verdict] += 1
    return found


def summary(rows: Sequence[SeriesRow], verb: str = "checked") -> str:
    """'12 series checked: 9 complete, 2 incomplete, 1 unknown' (extra and inconsistent when any)."""
    found = counted(rows)
    parts = [f"{found[COMPLETE]} {COMPLETE}", f"{found[INCOMPLETE]} {INCOMPLETE}"]
    parts += [f"{found[name]} {name}" for name in (EXTRA, INCONSISTENT) if found[name]]
    parts.append(f"{found[UNKNOWN]} {UNKNOWN}")
    return f"{plural(len(rows), 'series')} {verb}: {', '.join(parts)}"


def mismatch_lines(rows: Iterable[SeriesRow], log_phi: bool = False) -> list[str]:
    """One line per series whose count is wrong: its label, then what is wrong."""
    return [f"{row.label(log_phi)}: {row.problem()}" for row in rows if row.mismatch]


def sort_key(row: SeriesRow) -> tuple[Any, ...]:
    """Patient, study date and study, then series by number (as a number when it is one)."""
    number = row.SeriesNumber.strip()
    numeric = number.lstrip("-").isdigit()
    return (
        row.PatientID,
        row.StudyDate,
        row.StudyInstanceUID,
        (0, int(number), "") if numeric else (1, 0, number),
        row.SeriesInstanceUID,
    )


# -- from a server ----------------------------------------------------------------------------------


def _tags(source: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, str]:
    source = source or {}
    return {name: str(source.get(name) or "") for name in names}


def series_row(study: Mapping[str, Any], series: Mapping[str, Any]) -> SeriesRow:
    """The row of one series as Orthanc describes it (`/series/{id}`, or an entry of
    `/studies/{id}/series`) in STUDY (`/studies/{id}`): expected is Orthanc's ExpectedNumberOfInstances
    (None when it knows none), present the instances it lists."""
    expected = series.get("ExpectedNumberOfInstances")
    return SeriesRow(
        **_tags(study.get("PatientMainDicomTags"), PATIENT_TAGS),
        **_tags(study.get("MainDicomTags"), STUDY_TAGS),
        **_tags(series.get("MainDicomTags"), SERIES_TAGS),
        expected_instances=int(expected) if expected is not None else None,
        present_instances=len(series.get("Instances") or ()),
        orthanc_study=str(study.get("ID") or series.get("ParentStudy") or ""),
        orthanc_series=str(series.get("ID") or ""),
        orthanc_status=series.get("Status"),
    )


def study_rows(server: Orthanc, study: str) -> list[SeriesRow]:
    """The series of one study on SERVER, without sizes (two requests). Raises NotFound when the study
    is gone, and what the server's answers raise."""
    info = server.resource("studies", study)
    return [series_row(info, series) for series in server.children("studies", study, "series")]


def series_size(server: Orthanc, series: str) -> int | None:
    """The bytes of a series' DICOM files as Orthanc counts them (None when the series is gone).

    DicomUncompressedSize, not DiskSize: it is the files' own size whatever Orthanc's storage
    compression, so that a server's row and a download's row of the same series agree."""
    try:
        stats = server.get_json(f"/series/{series}/statistics")
    except NotFound:
        return None
    value = stats.get("DicomUncompressedSize", stats.get("DiskSize"))
    return int(value) if value is not None else None


def series_rows_from_server(
    server: Orthanc, studies: Sequence[str], *, workers: int = 4, sizes: bool = True
) -> list[SeriesRow]:
    """The rows of STUDIES (Orthanc IDs) on SERVER, WORKERS requests at a time, sorted (see sort_key).

    A study deleted while it is read is left out (logged), a series deleted meanwhile has no size. Raises
    what the server's answers raise (Unreachable, ServerError...), once the requests in flight end.
    """
    rows: list[SeriesRow] = []
    gone = 0
    # a read-only report: a thread pool is enough (nothing to resume), and it keeps the ledger out of it
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="inventory") as pool:
        pending: set[Future[Any]] = {pool.submit(study_rows, server, study) for study in studies}
        kinds: dict[Future[Any], SeriesRow | None] = dict.fromkeys(pending)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    row = kinds.pop(future)
                    try:
                        found = future.result()
                    except NotFound:
                        gone += 1
                        continue
                    if row is not None:  # a size came back
                        rows.append(replace(row, size_bytes=found))
                        continue
                    for one in found:
                        if not sizes:
                            rows.append(one)
                            continue
                        asked = pool.submit(series_size, server, one.orthanc_series)
                        kinds[asked] = one
                        pending.add(asked)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if gone:
        log.warning("%s left the server while it was read", plural(gone, "study"))
    return sorted(rows, key=sort_key)


# -- from a download run ----------------------------------------------------------------------------


def _present(ledger: Ledger, run_id: str) -> dict[str, tuple[int, int]]:
    """Instances on disk (done or skipped instance items) and their bytes, by Orthanc series ID, counted
    by the database: a big run has millions of instance items. An instance meant for a ZIP counts only
    once that ZIP is written (its archive item done): a part file is not a download."""
    from sqlalchemy import func, select

    from pacsflow.ledger import DONE, SKIPPED
    from pacsflow.ledger.schema import items

    series = items.c.payload["series"].as_string()
    archive = items.c.payload["zip"].as_string()
    # the server's size of each file (in its payload): an instance skipped as already there moved no
    # bytes in this run, but it is there all the same
    size = items.c.payload["size"].as_integer()
    query = (
        select(series, archive, func.count(), func.coalesce(func.sum(func.coalesce(size, items.c.bytes)), 0))
        .where(
            items.c.run_id == run_id,
            items.c.kind == RUN_INSTANCE,
            items.c.status.in_((DONE, SKIPPED)),
        )
        .group_by(series, archive)
    )
    written = {
        str(item.payload.get("zip"))
        for status in (DONE, SKIPPED)
        for item in ledger.items(run_id, status, kind=RUN_ARCHIVE)
    }
    present: dict[str, tuple[int, int]] = {}
    with ledger.engine.connect() as conn:
        for key, zipped, count, total in conn.execute(query):
            if not key or (zipped and zipped not in written):
                continue
            before = present.get(key, (0, 0))
            present[key] = (before[0] + int(count), before[1] + int(total))
    return present


def _recorded_series(ledger: Ledger, run_id: str) -> Iterator[Mapping[str, Any]]:
    """The series the run's study (or patient) items recorded when they listed them, each once."""
    from pacsflow.ledger import DONE

    seen: set[str] = set()
    # per-patient ZIP runs list a patient's studies in one item
    found = [*ledger.items(run_id, DONE, kind=RUN_STUDY), *ledger.items(run_id, DONE, kind="patient")]
    for item in found:
        for series in (item.result or {}).get("series") or ():
            key = str(series.get("id") or "")
            if key and key not in seen:
                seen.add(key)
                yield series


def series_rows_from_retrieve(ledger: Ledger, run_id: str) -> list[SeriesRow]:
    """The rows of a retrieve run: each series item carries the C-FIND answers (`tags`) and the count
    the node announced (`expected`); its result, done or failed, the count received (`present`). A
    series not tried yet counts 0 received."""
    from pacsflow.orthanc import orthanc_id

    rows = []
    for item in ledger.items(run_id, kind=RUN_SERIES):
        tags = item.payload.get("tags") or {}
        result = item.result or {}
        expected = result.get("expected", item.payload.get("expected"))
        patient, study, series = (
            str(item.payload.get(name) or "") for name in ("patient", "study", "series")
        )
        rows.append(
            SeriesRow(
                **{name: str(tags.get(name) or "") for name in (*PATIENT_TAGS, *STUDY_TAGS, *SERIES_TAGS)},
                expected_instances=int(expected) if expected is not None else None,
                present_instances=int(result.get("present") or 0),
                size_bytes=item.bytes or None,
                orthanc_study=orthanc_id(patient, study),
                orthanc_series=orthanc_id(patient, study, series),
            )
        )
    return sorted(rows, key=sort_key)


def series_rows_from_run(ledger: Ledger, run_id: str) -> list[SeriesRow]:
    """The rows of a download run, from its ledger records (none when it recorded no series).

    Its study items' results list each series (`{"series": [{"id", "expected", "listed", ...}]}`); the
    expected count is the series' `expected` (Orthanc's, when it knew one), else `listed` (the instances
    the server listed when the run planned it); present are its instance items done or skipped (the file
    is there), and the size is their bytes.
    """
    present = _present(ledger, run_id)
    rows = []
    for series in _recorded_series(ledger, run_id):
        key = str(series["id"])
        expected = series.get("expected")
        if expected is None:
            expected = series.get("listed")
        count, size = present.get(key, (0, 0))
        rows.append(
            SeriesRow(
                **{name: str(series.get(name) or "") for name in (*PATIENT_TAGS, *STUDY_TAGS, *SERIES_TAGS)},
                expected_instances=int(expected) if expected is not None else None,
                present_instances=count,
                size_bytes=size,
                orthanc_study=str(series.get("study") or ""),
                orthanc_series=key,
            )
        )
    return sorted(rows, key=sort_key)


# -- writing ----------------------------------------------------------------------------------------


def write_csv(path: Path, rows: Iterable[SeriesRow]) -> int:
    """ROWS as a CSV at PATH (COLUMNS, one row per series): mode 0600 from its first byte, since it names
    patients, written under a temporary name and renamed. Returns the rows written. Raises OSError."""
    from pacsflow.anonymize.mapping import write_private_csv

    return write_private_csv(Path(path), COLUMNS, (row.cells() for row in rows))


# -- the service: `pacsflow inventory` --------------------------------------------------------------


@dataclass
class Inventory:
    """What `inventory` found: its rows, and where they came from ('server NAME' or 'run ID')."""

    rows: list[SeriesRow]
    source: str

    @property
    def studies(self) -> int:
        return len({row.orthanc_study or row.StudyInstanceUID for row in self.rows})


def is_server(pacsflow: Pacsflow, spec: str) -> bool:
    """Whether SPEC names an Orthanc server (a URL, or a configured name) rather than a run."""
    from pacsflow.config import find_name

    return "://" in spec or find_name(spec, pacsflow.settings.servers) is not None


def inventory(
    pacsflow: Pacsflow, spec: str, selection: Selection | None = None, *, workers: int | None = None
) -> Inventory:
    """The rows of SPEC: a server (its studies SELECTION chooses; none: every study), read WORKERS
    requests at a time (default: the settings'), or a download run of the ledger (ID, unique prefix or
    'last'; no selection then).

    Raises ConfigError for a SPEC that is neither (one line naming both tries), a run that recorded no
    series, a selection with a run; PreflightError or Unauthorized for a server that cannot be used, and
    what the server's answers raise.
    """
    settings = pacsflow.settings
    if is_server(pacsflow, spec) or settings.is_modality(spec):
        from pacsflow.ops.servers import connect, preflight_server
        from pacsflow.selection import Selection, resolve

        workers = workers or settings.workers
        with connect(settings, spec, workers) as server:
            preflight_server(server)
            studies = resolve(server, selection or Selection())
            rows = series_rows_from_server(server, studies, workers=workers)
            return Inventory(rows, f"server {server.display}")
    run = _find_run(pacsflow, spec)
    if selection is not None and (selection.named or selection.query):
        raise ConfigError(
            "--study, --accession, --patient and --query choose studies on a server: not with a run"
        )
    if run.operation == "retrieve":
        rows = series_rows_from_retrieve(pacsflow.ledger, run.id)
    else:
        rows = series_rows_from_run(pacsflow.ledger, run.id)
    if not rows:
        raise ConfigError(
            f"run {run.id} ({run.operation}) has recorded no series: `inventory --from RUN` reads a "
            "download or retrieve run whose studies were listed"
        )
    return Inventory(rows, f"run {run.id}")


def _find_run(pacsflow: Pacsflow, spec: str) -> Any:
    """The run SPEC names. Raises ConfigError saying SPEC is neither a server nor a run."""
    from pacsflow.config import did_you_mean

    try:
        return pacsflow.ledger.run(spec)
    except ConfigError as exc:
        if "ambiguous" in exc.reason:
            raise
        hint = did_you_mean(spec, pacsflow.settings.servers)
        servers = ", ".join(pacsflow.settings.servers) or "none configured"
        raise ConfigError(
            f"--from {spec!r} is neither a server{hint} (known: {servers}; or give a URL) "
            f"nor a run ({exc.reason})"
        ) from None
