"""anonymize: de-identify files, folders and archives into a clean tree, record the mapping, verify it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pacsflow.anonymize.deidentify import Deidentifier, Record
from pacsflow.dicomfiles import looks_like_dicom, write_atomically
from pacsflow.errors import BadInput, ConfigError
from pacsflow.layout import safe_name
from pacsflow.ledger import DONE, FAILED, SKIPPED, Item, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.deidentifying import (
    Deidentifying,
    deidentify_checked,
    settle,
    verified_lines,
    write_mapping,
)
from pacsflow.ops.params import AnonymizeParams
from pacsflow.ops.processes import Processes
from pacsflow.ops.upload import ARCHIVE, FILE, FOLDER, MEMBER, NOT_DICOM, ArchiveFiles, PriorUploads
from pacsflow.progress import Units
from pacsflow.wording import plural

WRITTEN_BEFORE = "already written"
REFUSED = "refused: may show burned-in text"
_HEAD = 1024


def output_path(out: Path, record: Record | Mapping[str, Any]) -> Path:
    """Where a de-identified instance goes: Pseudonym/StudyUID/SeriesUID/SOPUID.dcm (no original
    value in any name: folder names are read by more people than files are)."""
    get = record.get if isinstance(record, Mapping) else lambda name: getattr(record, name)
    return (
        out
        / safe_name(str(get("pseudonym")), "patient")
        / safe_name(str(get("new_study_uid")), "study")
        / safe_name(str(get("new_series_uid")), "series")
        / f"{safe_name(str(get('new_sop_uid')), 'instance')}.dcm"
    )


class TreeWriter:
    """Where ArchiveFiles hands each DICOM payload: de-identified, then written atomically into the tree."""

    def __init__(self, op: Anonymize) -> None:
        self.op = op

    def already_there(self, header: bytes, where: str) -> tuple[Outcome | None, None]:
        return None, None  # the output's name comes from the pseudonyms: known once de-identified

    def send(self, data: bytes, where: str, join_key: str | None = None, uids: Any = None) -> Outcome:
        """Raises BadInput: not readable, burned-in text possible, a leak found, or the tree not writable."""
        return write_into(self.op.deidentifier(), data, where, self.op.out)


def write_into(deidentifier: Deidentifier, data: bytes, where: str, out: Path) -> Outcome:
    """DATA de-identified, verified and written into the tree under OUT (skipped when that file is there).

    Raises BadInput: not readable, burned-in text possible, a leak found, or the tree not writable."""
    if not looks_like_dicom(data[:_HEAD]):
        return Outcome(status=SKIPPED, note=NOT_DICOM)
    result = deidentify_checked(deidentifier, data, where)
    record = result.record
    target = output_path(out, record)
    found = {"id": record.orthanc_after, "study": None, "anon": result.anon()}
    try:
        if _same_file(target, result.data):
            return Outcome(status=SKIPPED, note=WRITTEN_BEFORE, result=found)
        write_atomically(target, result.data)
    except OSError as exc:
        raise BadInput(f"cannot write the de-identified file ({exc.strerror})", where=where) from None
    return Outcome(status=DONE, nbytes=len(result.data), result=found)


def _same_file(target: Path, data: bytes) -> bool:
    """Whether TARGET holds DATA already (a rerun): the same bytes, not just the same size."""
    return target.exists() and target.stat().st_size == len(data) and target.read_bytes() == data


@register
class Anonymize(Operation):
    """One item per file (and per archive member), as upload plans them; each is written de-identified."""

    name = "anonymize"
    unit = "files"
    units = Units("files", {FILE, MEMBER}, opened=ARCHIVE)
    Params = AnonymizeParams
    p: AnonymizeParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | AnonymizeParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError: no secret, not the run's secret."""
        super().__init__(settings, params)
        self.paths = [Path(path) for path in self.p.paths]
        self.out = Path(self.p.out)
        self._deid = Deidentifying(self, settle(self))
        self.files = ArchiveFiles(TreeWriter(self))  # type: ignore[arg-type]
        #: worker processes for the plain files of a large run (see ops.processes); None: this process.
        #: Started now, before the engine starts its threads, so that they can be forked at once.
        self._processes = Processes.for_paths(self, self._deid.keys, self.paths)

    def deidentifier(self) -> Any:
        return self._deid.get()

    def threads(self, workers: int) -> int:
        # while one thread takes a process's result, another has its next file waiting for it
        return 2 * workers if self._processes is not None else workers

    def preflight(self) -> None:
        """Raises ConfigError: an input that does not exist, an output inside an input, or one that is
        not a folder."""
        missing = [str(p) for p in self.paths if not p.exists()]
        if missing:
            raise ConfigError(f"no such file or folder: {', '.join(missing)}")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out} exists and is not a folder")
        out = self.out.resolve()
        for path in self.paths:
            if path.is_dir() and (out == path.resolve() or path.resolve() in out.parents):
                raise ConfigError("--out is inside an input folder: its files would be read as input")
        self.out.mkdir(parents=True, exist_ok=True)

    def plan(self) -> Iterable[PlannedItem]:
        paths = [path.absolute() for path in self.paths]
        return PriorUploads.none().items(paths, str, {}, 0, set())

    def do(self, item: Item) -> Outcome:
        """Raises BadInput (unreadable, corrupt, refused or unwritable file)."""
        if item.kind == MEMBER:
            return self.files.do_member(item, None)
        if item.kind == FOLDER:
            raise BadInput("a folder that could not be listed", where=item.payload.get("path", item.key))
        if self._processes is not None:
            path = item.payload.get("path", item.key)
            outcome = self._processes.write_file(path, str(self.out), self.run_id)
            if outcome is not None:
                return outcome
        return self.files.do_file(item, None)  # an archive, not DICOM, a special file, or a small run

    def finish(self, run: RunInfo) -> list[str]:
        added = write_mapping(self.ledger, run, (FILE, MEMBER), f"folder:{self.out}")
        return anonymize_summary(run, self.ledger, added) + verified_lines(self.ledger, run, (FILE, MEMBER))

    def close(self) -> None:
        self.files.close()
        if self._processes is not None:
            self._processes.close()


def anonymize_summary(run: RunInfo, ledger: Any, added: int) -> list[str]:
    """Files seen, de-identified, written before, not DICOM, refused for burned-in text, failed."""
    tally = ledger.tally(run.id)
    counted = {FILE, MEMBER}
    done = sum(
        n for (kind, status, note), n in tally.items() if kind in counted and status == DONE and not note
    )
    before = sum(n for (kind, _, note), n in tally.items() if kind in counted and note == WRITTEN_BEFORE)
    not_dicom = sum(n for (kind, _, note), n in tally.items() if kind in counted and note == NOT_DICOM)
    failed = sum(n for (kind, status, _), n in tally.items() if kind in counted and status == FAILED)
    refused = sum(1 for item in ledger.items(run.id, status=FAILED) if REFUSED in (item.last_error or ""))
    lines = [
        f"de-identified {done}, written before {before}, not DICOM {not_dicom}, failed {failed}"
        + (f" (of which {refused} refused for possible burned-in text)" if refused else "")
        + f"; {plural(added, 'new mapping row')}"
    ]
    if refused:
        lines.append(
            f"burned-in text possible in {plural(refused, 'file')}: `pacsflow run show {run.id} --failed`"
        )
    return lines
