"""upload: send DICOM from files, folders and ZIP/TAR archives to Orthanc, skipping what it holds."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pacsflow.archives import (
    COMPRESSED_TAR,
    TAR,
    ZIP,
    Member,
    ZipReader,
    archive_kind,
    iter_compressed_tar,
    list_tar,
    list_zip,
    read_tar_member,
)
from pacsflow.dicomfiles import InstanceUIDs, Unlisted, iter_files, looks_like_dicom, read_uids
from pacsflow.errors import BadInput, ConfigError, PacsflowError, ServerError, Unsupported
from pacsflow.join import JoinTable
from pacsflow.ledger import DONE, FAILED, SKIPPED, Item, Ledger, PlannedItem, RunInfo, storable
from pacsflow.ops.base import Operation, Outcome, log, register
from pacsflow.ops.params import RosterUploadParams, UploadParams
from pacsflow.ops.servers import connect, preflight_server
from pacsflow.orthanc import Orthanc
from pacsflow.stored import check_stored

NOT_DICOM = "not DICOM"
ALREADY = "already on server"
ARCHIVE = "archive"
FILE, MEMBER, FOLDER = "file", "member", "folder"
#: above this many instances on the server, asking for the full ID list costs more than it saves
KNOWN_IDS_LIMIT = 200_000
_HEAD = 1024
_PROBE = 64 * 1024  # enough for any ordinary header before the pixel data


class Sender:
    """Sends one DICOM payload: join values in, compute its Orthanc ID, skip if present, POST, check."""

    def __init__(self, server: Orthanc, join: JoinTable | None = None, label: str | None = None) -> None:
        self.server = server
        self.join = join
        self.label = label
        self._known: set[str] | None = None
        self._lock = threading.Lock()

    def preflight(self) -> None:
        """Raises PreflightError or Unauthorized (the server), Unsupported (labels wanted, Orthanc older
        than 1.12)."""
        preflight_server(self.server)
        wants_labels = self.label or (
            self.join is not None and any(self.join.label_for(k) for k in self.join.values)
        )
        if wants_labels and not self.server.capabilities().labels:
            version = self.server.capabilities().version
            raise Unsupported(
                f"{self.server.display} runs Orthanc {version}, which has no labels (1.12 or newer)"
            )

    def known_ids(self) -> set[str]:
        """The server's instance IDs, read once, so what it holds is skipped without being sent."""
        with self._lock:
            if self._known is None:
                count = int(self.server.statistics().get("CountInstances", 0))
                self._known = set(self.server.ids("instances")) if 0 < count <= KNOWN_IDS_LIMIT else set()
            return self._known

    def already_there(self, header: bytes, where: str) -> tuple[Outcome | None, InstanceUIDs | None]:
        """From a file's first bytes: an Outcome if the server holds it already, and the UIDs read."""
        if self.join is not None or not self.known_ids():
            return None, None  # a join changes the IDs; an empty server holds nothing
        try:
            uids = read_uids(header, where)
        except BadInput:
            return None, None  # the header is longer than what we read: send() reads it all
        if uids.instance_id in self.known_ids():
            return Outcome(
                status=SKIPPED, note=ALREADY, result={"id": uids.instance_id, "study": uids.study_id}
            ), uids
        return None, uids

    def send(
        self, data: bytes, where: str, join_key: str | None = None, uids: InstanceUIDs | None = None
    ) -> Outcome:
        """Raises BadInput (a corrupt header, no join row for the key, refused by the server), or what the
        server's answers raise."""
        if not looks_like_dicom(data[:_HEAD]):
            return Outcome(status=SKIPPED, note=NOT_DICOM)
        label = self.label
        if self.join is not None:
            data, join_key = self.join.apply(data, join_key, where)
            label = self.join.label_for(join_key) or label
            uids = None
        known = self.known_ids()
        expected = None
        if known:  # the server holds instances: read the header's UIDs to skip what it has
            uids = uids or read_uids(data, where)
            expected = uids.instance_id
            if expected in known:
                return Outcome(status=SKIPPED, note=ALREADY, result={"id": expected, "study": uids.study_id})
        try:
            answer = self.server.upload(data)
        except ServerError as exc:
            if exc.status == 400:  # Orthanc could not parse it: the file is at fault, not the server
                raise BadInput(
                    f"rejected by the server as not valid DICOM ({exc.reason})", where=where
                ) from None
            raise
        stored = check_stored(answer, where=where, expected_id=expected)
        result = {"id": answer.get("ID"), "study": answer.get("ParentStudy")}
        if label:
            self.server.request("PUT", f"/studies/{result['study']}/labels/{label}")
        if not stored:
            return Outcome(status=SKIPPED, note=ALREADY, result=result)
        return Outcome(status=DONE, nbytes=len(data), result=result)


class ArchiveFiles:
    """Turns file items into payloads: plain files, archive members, and whole compressed TARs."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.zips = ZipReader()

    def do_file(self, item: Item, join_key: str | None) -> Outcome:
        path = Path(item.payload.get("path", item.key))
        if path.name.upper() == "DICOMDIR":  # a media index, not an image
            return Outcome(status=SKIPPED, note=NOT_DICOM)
        uids = None
        try:
            with open(path, "rb") as fh:
                head = fh.read(_HEAD)
                if looks_like_dicom(head):
                    kind = None
                    # Most of a file is pixels: its header tells whether the server holds it already.
                    settled, uids = self.sender.already_there(head + fh.read(_PROBE - _HEAD), path.name)
                    if settled is not None:
                        return settled
                    fh.seek(0)
                    data = fh.read()  # one read, no copy: this is the hot path
                else:
                    kind = archive_kind(head, path)
                    if kind is None:
                        return Outcome(status=SKIPPED, note=NOT_DICOM)
        except FileNotFoundError:
            raise BadInput("file vanished before upload", where=path.name) from None
        except IsADirectoryError:
            raise BadInput("is a folder", where=path.name) from None
        except OSError as exc:
            raise BadInput(f"cannot read ({exc.strerror})", where=path.name) from None
        if kind is None:
            return self.sender.send(data, path.name, join_key, uids)
        if kind == COMPRESSED_TAR:
            return self._compressed_tar(path, join_key)
        members = list_zip(path) if kind == ZIP else list_tar(path)
        children = [self._member_item(item, path, kind, member) for member in members]
        return Outcome(note=ARCHIVE, result={"members": len(members)}, children=children)

    @staticmethod
    def _member_item(item: Item, path: Path, kind: str, member: Member) -> PlannedItem:
        payload: dict[str, Any] = {**item.payload, "archive": str(path), "format": kind, "name": member.name}
        if kind == TAR:
            payload.update(offset=member.offset, size=member.size)
        if member.unsafe:
            payload["unsafe"] = True
        return PlannedItem(MEMBER, f"m/{path}!{member.name}", payload, phase=item.phase + 1)

    def do_member(self, item: Item, join_key: str | None) -> Outcome:
        payload = item.payload
        archive, name = Path(payload["archive"]), payload["name"]
        where = f"{archive.name}!{name}"
        if payload.get("unsafe"):
            raise BadInput("unsafe member name (absolute or '..'); not read", where=where)
        if payload["format"] == ZIP:
            data = self.zips.read(archive, name)
        else:
            data = read_tar_member(archive, Member(name, payload["size"], payload["offset"]))
        return self.sender.send(data, where, join_key)

    def _compressed_tar(self, path: Path, join_key: str | None) -> Outcome:
        """A .tar.gz/.bz2/.xz has no random access: its members go one by one within this item."""
        counts = {"members": 0, "sent": 0, "already": 0, "not_dicom": 0}
        ids: list[str] = []
        studies: set[str] = set()
        failures: list[str] = []
        sent_bytes = 0
        for member, data in iter_compressed_tar(path):
            counts["members"] += 1
            where = f"{path.name}!{member.name}"
            if member.unsafe:
                failures.append(f"{where}: unsafe member name")
                continue
            try:
                outcome = self.sender.send(data, where, join_key)
            except BadInput as exc:
                failures.append(str(exc))
                continue
            if outcome.note == NOT_DICOM:
                counts["not_dicom"] += 1
                continue
            counts["already" if outcome.status == SKIPPED else "sent"] += 1
            sent_bytes += outcome.nbytes
            if outcome.result:
                ids.append(outcome.result["id"])
                studies.add(outcome.result["study"])
        if failures:
            raise BadInput(
                f"{len(failures)} of {counts['members']} members failed",
                where=path.name,
                detail=first_failures(failures),
            )
        return Outcome(
            note=ARCHIVE, nbytes=sent_bytes, result={**counts, "ids": ids, "studies": sorted(studies)}
        )

    def close(self) -> None:
        self.zips.close()


def first_failures(errors: list[str]) -> str:
    """The first three errors and how many more: one line for an item's error, however many failed."""
    more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
    return "; ".join(errors[:3]) + more


class PriorUploads:
    """Files that earlier runs sent to this server: an unchanged one (same size and modification time)
    whose instance the server still holds is settled when planned, without being opened again."""

    def __init__(self, ledger: Ledger, settings: Any, server: Orthanc) -> None:
        self.files: dict[str, tuple[int, int, str, str | None]] = {}
        self.server = server
        for params, item in ledger.finished_items(("upload", "roster-upload"), FILE):
            result, payload = item.result or {}, item.payload
            if "id" not in result or "size" not in payload or params.get("csv") or params.get("label"):
                continue
            try:
                if settings.server(params["to"]).url != server.config.url:
                    continue
            except PacsflowError:
                continue
            path = payload.get("path", item.key)
            self.files[path] = (payload["size"], payload["mtime"], result["id"], result.get("study"))

    def file_item(
        self, path: Path, key: str, payload: dict[str, Any], phase: int, known: set[str]
    ) -> PlannedItem:
        """The item for one file, already settled as skipped when an earlier run covers it."""
        try:
            stat = path.stat()
        except OSError:
            return PlannedItem(FILE, key, payload, phase)  # doing it will say what is wrong
        payload = {**payload, "size": stat.st_size, "mtime": stat.st_mtime_ns}
        if key != str(path) or storable(key) != key:  # e.g. a name that is not UTF-8: the key is escaped
            payload.setdefault("path", str(path))
        earlier = self.files.get(str(path))
        if earlier and earlier[:2] == (stat.st_size, stat.st_mtime_ns) and earlier[2] in known:
            result = {"id": earlier[2], "study": earlier[3]}
            return PlannedItem(FILE, key, payload, phase, status=SKIPPED, note=ALREADY, result=result)
        return PlannedItem(FILE, key, payload, phase)

    def items(
        self,
        paths: list[Path],
        key: Callable[[Path], str],
        payload: dict[str, Any],
        phase: int,
        known: set[str],
    ) -> Iterator[PlannedItem]:
        """An item for every file under PATHS, and a failed one for every folder that cannot be listed."""
        for found in iter_files(paths):
            yield self._item(found, key, payload, phase, known)

    def folder_items(
        self, folder: Path, key: Callable[[Path], str], payload: dict[str, Any], phase: int, known: set[str]
    ) -> list[PlannedItem]:
        """The items under FOLDER, for the item that lists it: that item fails if FOLDER cannot be listed."""
        children = []
        for found in iter_files([folder]):
            if isinstance(found, Unlisted) and found.path == folder:
                raise _cannot_list(found, where=str(folder))
            children.append(self._item(found, key, payload, phase, known))
        return children

    def _item(
        self,
        found: Path | Unlisted,
        key: Callable[[Path], str],
        payload: dict[str, Any],
        phase: int,
        known: set[str],
    ) -> PlannedItem:
        if isinstance(found, Unlisted):
            log.warning("a folder could not be listed (%s): recorded as failed", found.reason)
            note = str(_cannot_list(found, where=found.path.name))
            folder = {**payload, "path": str(found.path)}  # `retry` lists it again
            return PlannedItem(FOLDER, key(found.path), folder, phase, status=FAILED, note=note)
        return self.file_item(found, key(found), payload, phase, known)


def _cannot_list(found: Unlisted, where: str) -> BadInput:
    return BadInput(f"cannot list folder ({found.reason})", where=where)


def open_sender(settings: Any, params: UploadParams | RosterUploadParams) -> Sender:
    """The sender of an upload's files: its server client and its CSV join, read now.

    Raises ConfigError for a server that is not configured or a CSV join that cannot be used.
    """
    server = connect(settings, params.to, params.workers or settings.workers)
    join = JoinTable.load(Path(params.csv), params.csv_key) if params.csv and params.csv_key else None
    return Sender(server, join, params.label)


@register
class Upload(Operation):
    """Files, folders and archives: one item per file (and per member of a ZIP or plain TAR)."""

    name = "upload"
    unit = "files"
    Params = UploadParams
    p: UploadParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | UploadParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for an unknown server or a bad CSV join."""
        super().__init__(settings, params)
        self.paths = [Path(path) for path in self.p.paths]
        self.sender = open_sender(settings, self.p)
        self.files = ArchiveFiles(self.sender)

    def preflight(self) -> None:
        """Raises ConfigError (a path that does not exist), PreflightError, Unauthorized, Unsupported."""
        missing = [str(p) for p in self.paths if not p.exists()]
        if missing:
            raise ConfigError(f"no such file or folder: {', '.join(missing)}")
        self.sender.preflight()

    @functools.cached_property
    def prior(self) -> PriorUploads:
        return PriorUploads(self.ledger, self.settings, self.sender.server)

    def plan(self) -> Iterable[PlannedItem]:
        known = self.sender.known_ids() if self.prior.files and not self.sender.join else set()
        paths = [path.absolute() for path in self.paths]  # not resolve(): keep the names the user sees
        return self.prior.items(paths, str, {}, 0, known)

    def do(self, item: Item) -> Outcome:
        """Raises BadInput (unreadable, corrupt or refused file or archive, a folder that cannot be listed),
        or what the server's answers raise."""
        if item.kind == MEMBER:
            return self.files.do_member(item, None)
        if item.kind == FOLDER:  # put back by `retry`: its files become items now
            children = self.prior.folder_items(Path(item.payload["path"]), str, {}, item.phase, set())
            return Outcome(result={"files": len(children)}, children=children)
        return self.files.do_file(item, None)

    def finish(self, run: RunInfo) -> list[str]:
        return upload_summary(run, self.ledger)

    def close(self) -> None:
        self.files.close()
        self.sender.server.close()


def upload_summary(run: RunInfo, ledger: Ledger) -> list[str]:
    """Files seen, DICOM, sent, already there, not DICOM, failed, MB (compressed TARs counted inside)."""
    tally = ledger.tally(run.id)
    sent = sum(
        n
        for (kind, status, note), n in tally.items()
        if kind in (FILE, MEMBER) and status == DONE and not note
    )
    already = sum(n for (kind, _, note), n in tally.items() if kind in (FILE, MEMBER) and note == ALREADY)
    not_dicom = sum(n for (kind, _, note), n in tally.items() if kind in (FILE, MEMBER) and note == NOT_DICOM)
    failed = sum(n for (kind, status, _), n in tally.items() if kind in (FILE, MEMBER) and status == FAILED)
    archives = sum(n for (kind, _, note), n in tally.items() if kind == FILE and note == ARCHIVE)
    for item in ledger.items(run.id, status=DONE, kind=FILE, note=ARCHIVE):
        counts = item.result or {}
        if "sent" in counts:  # a compressed TAR, done member by member inside its item
            sent += counts["sent"]
            already += counts["already"]
            not_dicom += counts["not_dicom"]
    seen = sent + already + not_dicom + failed
    opened = f" (with {archives} archives opened)" if archives else ""
    lines = [
        f"files seen {seen}{opened}: DICOM {sent + already}, sent {sent}, already there {already}, "
        f"not DICOM {not_dicom}, failed {failed}; {run.bytes / 1e6:.1f} MB sent"
    ]
    unlisted = sum(n for (kind, status, _), n in tally.items() if kind == FOLDER and status == FAILED)
    if unlisted:  # their files are not counted above: nobody knows how many there are
        lines.append(
            f"folders that could not be listed: {unlisted} (see `pacsflow run show {run.id} --failed`)"
        )
    return lines
