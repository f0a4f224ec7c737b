"""upload: send DICOM files from folders and files to an Orthanc server, skipping what it already holds."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pacsflow.dicomfiles import iter_files, looks_like_dicom, read_uids
from pacsflow.errors import BadInput, ConfigError, ServerError
from pacsflow.ledger import DONE, FAILED, SKIPPED, Item, Ledger, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.servers import connect, preflight_server

NOT_DICOM = "not DICOM"
ALREADY = "already on server"
#: above this many instances on the server, asking for the full ID list costs more than it saves
KNOWN_IDS_LIMIT = 200_000


@register
class Upload(Operation):
    name = "upload"
    unit = "files"

    def __init__(self, settings: Any, params: dict[str, Any]) -> None:
        super().__init__(settings, params)
        self.paths = [Path(p) for p in params["paths"]]
        self.server = connect(settings, params["to"], params.get("workers", settings.workers))
        self._known: set[str] | None = None
        self._known_lock = threading.Lock()

    def preflight(self) -> None:
        missing = [str(p) for p in self.paths if not p.exists()]
        if missing:
            raise ConfigError(f"no such file or folder: {', '.join(missing)}")
        preflight_server(self.server)

    def plan(self) -> Iterable[PlannedItem]:
        for path in iter_files(self.paths):
            yield PlannedItem("file", str(path.resolve()))

    def known_ids(self) -> set[str]:
        """The server's instance IDs, read once, so files it holds are skipped without being sent."""
        with self._known_lock:
            if self._known is None:
                count = int(self.server.statistics().get("CountInstances", 0))
                self._known = set(self.server.ids("instances")) if 0 < count <= KNOWN_IDS_LIMIT else set()
            return self._known

    def do(self, item: Item) -> Outcome:
        path = Path(item.key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BadInput(f"{path.name}: file vanished before upload") from None
        except OSError as exc:
            raise BadInput(f"{path.name}: cannot read ({exc.strerror})") from None
        if path.name.upper() == "DICOMDIR" or not looks_like_dicom(data[:132]):
            return Outcome(status=SKIPPED, note=NOT_DICOM)
        uids = read_uids(data, path.name)
        expected = uids.instance_id
        if expected in self.known_ids():
            return Outcome(status=SKIPPED, note=ALREADY, result={"id": expected})
        try:
            answer = self.server.upload(data)
        except ServerError as exc:
            if exc.status == 400:  # Orthanc could not parse it: the file is at fault, not the server
                raise BadInput(f"{path.name}: rejected by the server as not valid DICOM ({exc})") from None
            raise
        if answer.get("ID") != expected:
            raise BadInput(f"{path.name}: server stored it as {answer.get('ID')}, expected {expected}")
        if answer.get("Status") == "AlreadyStored":
            return Outcome(status=SKIPPED, note=ALREADY, result={"id": expected})
        return Outcome(status=DONE, nbytes=len(data), result={"id": expected, "study": uids.study_id})

    def finish(self, run: RunInfo) -> list[str]:
        return upload_summary(run, self.ledger)

    def close(self) -> None:
        self.server.close()


def upload_summary(run: RunInfo, ledger: Ledger) -> list[str]:
    """Files seen, sent, already there, not DICOM, failed, MB."""
    tally = ledger.tally(run.id)
    return [
        f"files seen {run.total}: sent {tally['file', DONE, '']}, "
        f"already there {tally['file', SKIPPED, ALREADY]}, "
        f"not DICOM {tally['file', SKIPPED, NOT_DICOM]}, failed {run.counts.get(FAILED, 0)}; "
        f"{run.bytes / 1e6:.1f} MB sent"
    ]
