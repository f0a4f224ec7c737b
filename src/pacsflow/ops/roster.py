"""upload --roster: batches of roster rows (patient folders), each row marked uploaded only once verified."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pacsflow.errors import BadInput, ConfigError, TransientError
from pacsflow.ledger import DONE, FAILED, FINISHED, SKIPPED, Item, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.params import DEFAULT_ERRORS, RosterUploadParams
from pacsflow.ops.upload import (
    FILE,
    FOLDER,
    MEMBER,
    ArchiveFiles,
    PriorUploads,
    deidentify_on_the_way,
    first_failures,
    mapping_lines,
    open_sender,
    upload_summary,
)
from pacsflow.progress import Units
from pacsflow.roster import Roster, roster_lock, same_value, update_errors
from pacsflow.wording import plural

ROW, VERIFY, COMMIT = "row", "verify", "commit"
# Each batch takes five phases: scan rows, files, archive members, verify rows, rewrite the roster.
PHASES_PER_BATCH = 5
__all__ = ["DEFAULT_ERRORS", "RosterUpload"]  # DEFAULT_ERRORS: its old home


@register
class RosterUpload(Operation):
    """Roster rows in batches: scan each row's folder, send its files, verify the row, mark the batch."""

    name = "roster-upload"
    unit = "items"
    # people count rows: a row is finished by its verify item, or fails itself (no folder to verify)
    units = Units("rows", {ROW}, finished_by={VERIFY: FINISHED, ROW: {FAILED}})
    Params = RosterUploadParams
    p: RosterUploadParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | RosterUploadParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for an unknown server or a bad CSV join."""
        super().__init__(settings, params)
        self.roster_path = Path(self.p.roster)
        self.root = Path(self.p.root)
        self.id_column = self.p.id_column
        self.status_column = self.p.status_column
        self.where: dict[str, str] = self.p.where
        self.errors_path = Path(self.p.errors)
        self.batch_size = self.p.batch_size
        self.sender = open_sender(settings, self.p)
        deidentify_on_the_way(self, self.sender)
        self.files = ArchiveFiles(self.sender)

    def _load(self) -> Roster:
        return Roster.load(self.roster_path, [self.id_column, self.status_column, *self.where])

    def preflight(self) -> None:
        """Raises ConfigError (the roster unreadable or lacking a column, --root not a folder),
        PreflightError, Unauthorized, Unsupported."""
        self._load()
        if not self.root.is_dir():
            raise ConfigError(f"--root {self.root} is not a folder")
        self.sender.preflight()

    @functools.cached_property
    def prior(self) -> PriorUploads:
        return PriorUploads(self.ledger, self.settings, self.sender.server)

    def plan(self) -> Iterable[PlannedItem]:
        self.prior  # noqa: B018 - read earlier runs once, before the workers start
        roster = self._load()
        first_line: dict[str, int] = {}
        rows: list[tuple[str, int, int | None]] = []  # (id, line, line of the first row with that id)
        for index in roster.shortlist(self.status_column, self.where):
            row_id = roster.cell(roster.rows[index], self.id_column).strip()
            line = index + 2  # 1-based, after the header
            rows.append((row_id, line, first_line.get(row_id)))
            first_line.setdefault(row_id, line)
        for batch, start in enumerate(range(0, len(rows), self.batch_size)):
            chunk = rows[start : start + self.batch_size]
            phase = batch * PHASES_PER_BATCH
            for row_id, line, duplicate_of in chunk:
                payload = {"row": row_id, "line": line, "duplicate_of": duplicate_of}
                yield PlannedItem(ROW, f"r/{line}", payload, phase)
            commit = {
                "batch": batch,
                "lines": [line for _, line, _ in chunk],
                "ids": [i for i, _, _ in chunk],
            }
            yield PlannedItem(COMMIT, f"c/{batch}", commit, phase + PHASES_PER_BATCH - 1)

    # -- doing ----------------------------------------------------------------------------------

    def do(self, item: Item) -> Outcome:
        """Raises BadInput (a row's folder missing, empty or failed; a file unusable; the server lacking
        an instance), TransientError (a row's files not finished yet), or what the server's answers raise.
        """
        if item.kind == ROW:
            return self._scan_row(item)
        if item.kind == FILE:
            return self.files.do_file(item, item.payload["row"])
        if item.kind == MEMBER:
            return self.files.do_member(item, item.payload["row"])
        if item.kind == FOLDER:  # put back by `retry`: its files become items now, and its verify waits
            payload = {"row": item.payload["row"]}
            children = self.prior.folder_items(
                Path(item.payload["path"]), _file_key, payload, item.phase, set()
            )
            return Outcome(result={"files": len(children)}, children=children)
        if item.kind == VERIFY:
            return self._verify_row(item)
        return self._commit_batch(item)

    def _scan_row(self, item: Item) -> Outcome:
        row_id, line = item.payload["row"], item.payload["line"]
        if item.payload.get("duplicate_of"):
            raise BadInput(f"duplicate {self.id_column} (first on line {item.payload['duplicate_of']})")
        folder = (self.root / row_id).resolve()
        if not row_id or folder.parent != self.root.resolve():
            raise BadInput(f"{self.id_column} is not a plain folder name", where=row_id)
        if not folder.is_dir():
            raise BadInput("folder missing", where=str(folder))
        known = self.sender.known_ids() if self.prior.files and not self.sender.join else set()
        children = self.prior.folder_items(folder, _file_key, {"row": row_id}, item.phase + 1, known)
        if not children:
            raise BadInput("folder is empty", where=str(folder))
        verify = {"row": row_id, "folder": str(folder), "files": len(children)}
        children.append(PlannedItem(VERIFY, f"v/{line}", verify, item.phase + 3))
        return Outcome(result={"files": len(children) - 1}, children=children)

    def _verify_row(self, item: Item) -> Outcome:
        """Every file of the folder accounted for, and every DICOM instance present on the server."""
        folder = item.payload["folder"]
        found = self.ledger.items(item.run_id, key_prefix=f"f/{folder}/") + self.ledger.items(
            item.run_id, key_prefix=f"m/{folder}/"
        )
        unfinished = [one for one in found if one.status not in (DONE, SKIPPED, FAILED)]
        files = [one for one in found if one.kind in (FILE, FOLDER)]
        members = sum(
            (one.result or {}).get("members", 0) for one in files if "sent" not in (one.result or {})
        )  # members of a ZIP or plain TAR are items of their own; a compressed TAR's are not
        # a subfolder listed only on `retry` brought files of its own
        listed = sum((one.result or {}).get("files", 0) for one in files if one.kind == FOLDER)
        if unfinished or len(files) != item.payload["files"] + listed or len(found) - len(files) != members:
            # never mark a row on an incomplete picture (e.g. items put back by `retry`): look again later
            raise TransientError("some files of this folder are not finished yet", where=folder)
        failed = [one for one in found if one.status == FAILED]
        if failed:
            raise BadInput(
                f"{len(failed)} of {plural(len(found), 'file')} failed",
                where=folder,
                detail=first_failures([one.last_error or "failed" for one in failed]),
            )
        wanted: set[str] = set()
        studies: set[str] = set()
        for one in found:
            result = one.result or {}
            wanted.update([result["id"]] if "id" in result else result.get("ids", []))
            studies.update([result["study"]] if "study" in result else result.get("studies", []))
        if not wanted:
            raise BadInput("no DICOM files in folder", where=folder)
        present: set[str] = set()
        for study in studies:
            present.update(self.sender.server.instance_ids_of("studies", study))
        missing = wanted - present
        if missing:
            raise BadInput(
                f"server lacks {len(missing)} of {plural(len(wanted), 'instance')} of this folder",
                where=folder,
            )
        return Outcome(result={"instances": len(wanted)})

    def _commit_batch(self, item: Item) -> Outcome:
        """Mark the batch's verified rows as uploaded; write the others to the errors CSV with the reason,
        and take out of it the rows the roster now marks done.

        Rows are found by line and checked by ID: if someone edited the roster meanwhile, a row that
        moved is looked up by its ID, and no other row is ever marked in its place.
        """
        rows = dict(zip(item.payload["lines"], item.payload["ids"], strict=True))
        verified: set[int] = set()
        reasons: dict[int, str] = {}
        keys = [f"{prefix}/{line}" for line in rows for prefix in ("r", "v")]
        for found in self.ledger.items(item.run_id, keys=keys):
            line = int(found.key.split("/", 1)[1])
            if found.status == FAILED:
                reasons[line] = found.last_error or "failed"
            elif found.kind == VERIFY and found.status in (DONE, SKIPPED):
                verified.add(line)
        with roster_lock(self.roster_path):
            roster = self._load()
            marked, changed = 0, False
            for line in sorted(verified):
                index = self._find_row(roster, line, rows[line])
                if index is None:
                    reasons[line] = f"roster changed: no row with this {self.id_column} any more"
                    continue
                marked += 1
                if not same_value(roster.cell(roster.rows[index], self.status_column) or "0", "1"):
                    roster.set_cell(roster.rows[index], self.status_column, "1")
                    changed = True
            if changed:
                roster.save()
            errors = []
            for line, reason in sorted(reasons.items()):
                index = self._find_row(roster, line, rows[line])
                if index is not None:
                    errors.append((roster.rows[index], reason))
                else:  # a row gone from the roster: its ID, in its column
                    gone = [""] * len(roster.header)
                    gone[roster.index(self.id_column)] = rows[line]
                    errors.append((gone, reason))
            # also when this batch has no errors: rows it marked leave the errors CSV
            update_errors(self.errors_path, roster, self.status_column, errors)
        return Outcome(result={"marked": marked, "errors": len(reasons)})

    def _find_row(self, roster: Roster, line: int, row_id: str) -> int | None:
        """The row planned at LINE if it still holds ROW_ID, else the first row with that ID."""
        index = line - 2
        if (
            0 <= index < len(roster.rows)
            and roster.cell(roster.rows[index], self.id_column).strip() == row_id
        ):
            return index
        for other, row in enumerate(roster.rows):
            if roster.cell(row, self.id_column).strip() == row_id:
                return other
        return None

    def finish(self, run: RunInfo) -> list[str]:
        # Rows that verified only after a `retry` came after their batch's commit: commit again
        # (idempotent: marked rows stay marked, an error is listed once, and a row now done not at all).
        marked = errors = 0
        for commit in self.ledger.items(run.id, kind=COMMIT, status=DONE):
            counts = self._commit_batch(commit).result or {}
            marked += counts.get("marked", 0)
            errors += counts.get("errors", 0)
        tally = self.ledger.tally(run.id)
        batches = sum(n for (kind, _, _), n in tally.items() if kind == COMMIT)
        rows = sum(n for (kind, _, _), n in tally.items() if kind == ROW)
        where = f" (see {self.errors_path})" if errors else ""
        lines = [
            f"rows {rows} in {plural(batches, 'batch')}: marked uploaded {marked}, errors {errors}{where}"
        ]
        return lines + upload_summary(run, self.ledger) + mapping_lines(self, run)

    def close(self) -> None:
        self.files.close()
        self.sender.server.close()


def _file_key(path: Path) -> str:
    return f"f/{path}"
