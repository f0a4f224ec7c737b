"""upload: send DICOM from files, folders and ZIP/TAR archives to Orthanc, skipping what it holds."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pacsflow.anonymize.deidentify import Deidentified
from pacsflow.archives import (
    COMPRESSED_TAR,
    MAX_NESTING,
    TAR,
    ZIP,
    Expansion,
    Member,
    ZipReader,
    archive_kind,
    iter_compressed_tar,
    iter_nested,
    list_tar,
    list_zip,
    member_archive_kind,
    read_tar_member,
)
from pacsflow.dicomfiles import (
    InstanceUIDs,
    NotRegular,
    Unlisted,
    broken_link,
    iter_files,
    looks_like_dicom,
    open_regular,
    read_uids,
)
from pacsflow.errors import BadInput, ConfigError, PacsflowError, ServerError, Unsupported
from pacsflow.join import JoinTable
from pacsflow.ledger import DONE, FAILED, SKIPPED, Item, Ledger, PlannedItem, RunInfo, storable
from pacsflow.ops.base import Operation, Outcome, log, register
from pacsflow.ops.params import RosterUploadParams, UploadParams
from pacsflow.ops.servers import connect, preflight_server
from pacsflow.orthanc import Orthanc
from pacsflow.progress import Units
from pacsflow.stored import check_stored
from pacsflow.wording import plural

NOT_DICOM = "not DICOM"
#: the note of a FIFO, socket or device found among the inputs: "not a regular file (FIFO)"
NOT_REGULAR = "not a regular file"
ALREADY = "already on server"
ARCHIVE = "archive"  # an archive opened into member items
READ_INSIDE = "archive read"  # an archive read to its end inside its own item (compressed TAR, nested)
FILE, MEMBER, FOLDER = "file", "member", "folder"
#: above this many instances on the server, asking for the full ID list costs more than it saves
KNOWN_IDS_LIMIT = 200_000
_HEAD = 1024
_PROBE = 64 * 1024  # enough for any ordinary header before the pixel data


class Sender:
    """Sends one DICOM payload: join values in, compute its Orthanc ID, skip if present, POST, check."""

    def __init__(
        self,
        server: Orthanc,
        join: JoinTable | None = None,
        label: str | None = None,
        deidentify: Callable[[bytes, str], Deidentified] | None = None,
    ) -> None:
        self.server = server
        self.join = join
        self.label = label
        #: de-identifies each payload before anything else (upload --anonymize): nothing leaves in clear
        self.deidentify = deidentify
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
        if self.join is not None or self.deidentify is not None or not self.known_ids():
            return None, None  # a join or de-identification changes the IDs; an empty server holds nothing
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
        anon = None
        if self.deidentify is not None:
            deidentified = self.deidentify(data, where)
            data, anon, uids = deidentified.data, deidentified.anon(), None
        if self.join is not None and anon is not None:
            # the de-identifier joined the CSV by the original PatientID (its pseudonyms, its values)
            label = self.join.label_for(anon["patient_id"]) or label
        elif self.join is not None:
            data, join_key = self.join.apply(data, join_key, where)
            label = self.join.label_for(join_key) or label
            uids = None
        known = self.known_ids()
        expected = None
        if known:  # the server holds instances: read the header's UIDs to skip what it has
            uids = uids or read_uids(data, where)
            expected = uids.instance_id
            if expected in known:
                result = {"id": expected, "study": uids.study_id}
                return Outcome(status=SKIPPED, note=ALREADY, result=_with(result, anon))
        try:
            answer = self.server.upload(data)
        except ServerError as exc:
            if exc.status == 400:  # Orthanc could not parse it: the file is at fault, not the server
                raise BadInput(
                    f"rejected by the server as not valid DICOM ({exc.reason})", where=where
                ) from None
            raise
        stored = check_stored(answer, where=where, expected_id=expected)
        result = _with({"id": answer.get("ID"), "study": answer.get("ParentStudy")}, anon)
        if label:
            self.server.request("PUT", f"/studies/{result['study']}/labels/{label}")
        if not stored:
            return Outcome(status=SKIPPED, note=ALREADY, result=result)
        return Outcome(status=DONE, nbytes=len(data), result=result)


def _with(result: dict[str, Any], anon: dict[str, Any] | None) -> dict[str, Any]:
    """RESULT with the de-identification record (and the Orthanc ID its copy got), if there is one."""
    if anon is not None:
        result["anon"] = {**anon, "orthanc_after": result["id"]}
    return result


@dataclass
class _Tally:
    """What the members read within one item add up to: a compressed TAR's, or a nested archive's."""

    members: int = 0
    sent: int = 0
    already: int = 0
    not_dicom: int = 0
    #: archives opened in memory by this item (a member item's own too; a compressed TAR's not)
    archives: int = 0
    nbytes: int = 0
    ids: list[str] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)
    anon: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    expansion: Expansion = field(default_factory=Expansion)

    def add(self, outcome: Outcome) -> None:
        if outcome.note == NOT_DICOM:
            self.not_dicom += 1
            return
        if outcome.status == SKIPPED:
            self.already += 1
        else:
            self.sent += 1
        self.nbytes += outcome.nbytes
        if outcome.result:
            self.ids.append(outcome.result["id"])
            if outcome.result.get("study"):
                self.studies.add(outcome.result["study"])
            if "anon" in outcome.result:  # de-identified on the way: the mapping needs each record
                self.anon.append(outcome.result["anon"])

    def outcome(self, where: str) -> Outcome:
        """The item's Outcome; raises BadInput if any member failed, carrying what was sent (it stays
        sent, and the summary counts it)."""
        counts = {
            "members": self.members,
            "sent": self.sent,
            "already": self.already,
            "not_dicom": self.not_dicom,
            "archives": self.archives,
            "failed": len(self.failures),
        }
        result = {**counts, "ids": self.ids, "studies": sorted(self.studies)}
        if self.anon:
            result["anon"] = self.anon
        if self.failures:
            error = BadInput(
                f"{len(self.failures)} of {plural(self.members, 'member')} failed",
                where=where,
                detail=first_failures(self.failures),
            )
            error.result, error.nbytes = result, self.nbytes
            raise error
        return Outcome(note=READ_INSIDE, nbytes=self.nbytes, result=result)


def _is_dicomdir(name: str) -> bool:
    """A media index (DICOMDIR), not an image: counted as not DICOM wherever it is found."""
    return PurePosixPath(name.replace("\\", "/")).name.upper() == "DICOMDIR"


class ArchiveFiles:
    """Turns file items into payloads: plain files, archive members, whole compressed TARs, and archives
    found inside archives (opened in memory within the item that found them, MAX_NESTING deep)."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.zips = ZipReader()

    def do_file(self, item: Item, join_key: str | None) -> Outcome:
        path = Path(item.payload.get("path", item.key))
        if _is_dicomdir(path.name):
            return Outcome(status=SKIPPED, note=NOT_DICOM)
        uids = None
        try:
            # never open() a FIFO, socket or device: a FIFO blocks its worker, and the run, for ever
            with open_regular(path) as fh:
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
        except NotRegular as exc:
            # not data someone meant to upload (a pipe, a socket, a device): skipped, with what it is
            return Outcome(status=SKIPPED, note=f"{NOT_REGULAR} ({exc.kind})")
        except FileNotFoundError:
            target = broken_link(path)
            if target is not None:  # the data is elsewhere, or gone: the operator must know
                raise BadInput("broken symlink", where=path.name, detail=f"to {target}") from None
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
        if _is_dicomdir(name):
            return Outcome(status=SKIPPED, note=NOT_DICOM)
        if payload["format"] == ZIP:
            data = self.zips.read(archive, name)
        else:
            data = read_tar_member(archive, Member(name, payload["size"], payload["offset"]))
        if not looks_like_dicom(data[:_HEAD]):
            tally = _Tally()
            # an archive in an archive (a ZIP of ZIPs per patient...): once "not DICOM", every image in
            # it lost without a word; a corrupt one fails this item
            kind = member_archive_kind(data, name, where, tally.expansion)
            if kind is not None:
                self._open_nested(data, kind, where, 2, join_key, tally)
                return tally.outcome(where)
        return self.sender.send(data, where, join_key)

    def _compressed_tar(self, path: Path, join_key: str | None) -> Outcome:
        """A .tar.gz/.bz2/.xz has no random access: its members go one by one within this item."""
        tally = _Tally()
        for member, data in iter_compressed_tar(path):
            tally.members += 1
            where = f"{path.name}!{member.name}"
            if member.unsafe:
                tally.failures.append(f"{where}: unsafe member name")
                continue
            self._send_member(data, member.name, where, 2, join_key, tally)
        return tally.outcome(path.name)

    def _send_member(
        self, data: bytes, name: str, where: str, level: int, join_key: str | None, tally: _Tally
    ) -> None:
        """One member read within an item: sent if DICOM, opened if an archive (at LEVEL, 1 being a file
        of the inputs), else counted as not DICOM; a failure goes into TALLY and the rest goes on."""
        if _is_dicomdir(name):
            tally.not_dicom += 1
            return
        try:
            if not looks_like_dicom(data[:_HEAD]):
                kind = member_archive_kind(data, name, where, tally.expansion)
                if kind is not None:
                    self._open_nested(data, kind, where, level, join_key, tally)
                    return
            outcome = self.sender.send(data, where, join_key)
        except BadInput as exc:
            tally.failures.append(str(exc))
            return
        tally.add(outcome)

    def _open_nested(
        self, data: bytes, kind: str, where: str, level: int, join_key: str | None, tally: _Tally
    ) -> None:
        """Send what the archive in DATA (at LEVEL) holds, member by member, within this item.

        Raises BadInput if it is nested too deep or corrupt (its members read before stay counted)."""
        if level > MAX_NESTING:
            raise BadInput(f"archive nested {level} deep, more than {MAX_NESTING}; not opened", where=where)
        tally.archives += 1
        for member, got in iter_nested(data, kind, where, tally.expansion):
            inner = f"{where}!{member.name}"
            tally.members += 1
            if member.unsafe:
                tally.failures.append(f"{inner}: unsafe member name")
            elif isinstance(got, BadInput):
                tally.failures.append(str(got))
            else:
                self._send_member(got, member.name, inner, level + 1, join_key, tally)

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
            changed = params.get("csv") or params.get("label") or params.get("anonymize")
            if "id" not in result or "size" not in payload or changed:
                continue
            try:
                if settings.server(params["to"]).url != server.config.url:
                    continue
            except PacsflowError:
                continue
            path = payload.get("path", item.key)
            self.files[path] = (payload["size"], payload["mtime"], result["id"], result.get("study"))

    @classmethod
    def none(cls) -> PriorUploads:
        """No earlier runs to consult: every file is planned to be read (anonymize, whose outputs are
        checked when each file is done)."""
        prior = cls.__new__(cls)
        prior.files = {}
        return prior

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


def deidentify_on_the_way(op: Operation, sender: Sender) -> None:
    """With `--anonymize`: fix the run's profile settings and de-identify in SENDER (the first item
    builds the Deidentifier, once the ledger is there). Raises ConfigError (no secret, not the run's)."""
    from pacsflow.ops.deidentifying import Deidentifying, deidentify_checked, settle

    if not op.p.anonymize:
        return
    deidentifying = Deidentifying(op, settle(op))
    sender.deidentify = lambda data, where: deidentify_checked(deidentifying.get(), data, where)


@register
class Upload(Operation):
    """Files, folders and archives: one item per file (and per member of a ZIP or plain TAR)."""

    name = "upload"
    unit = "files"
    units = Units("files", {FILE, MEMBER}, opened=ARCHIVE)  # an opened archive counts as its members
    Params = UploadParams
    p: UploadParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | UploadParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for an unknown server or a bad CSV join."""
        super().__init__(settings, params)
        self.paths = [Path(path) for path in self.p.paths]
        self.sender = open_sender(settings, self.p)
        deidentify_on_the_way(self, self.sender)
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
        return upload_summary(run, self.ledger) + mapping_lines(self, run)

    def close(self) -> None:
        self.files.close()
        self.sender.server.close()


def mapping_lines(op: Operation, run: RunInfo) -> list[str]:
    """With `--anonymize`: the mapping rows of what the run sent (to be found by server and Orthanc ID)."""
    if not op.p.anonymize:
        return []
    from pacsflow.ops.deidentifying import verified_lines, write_mapping

    target = f"server:{op.p.to}"
    added = write_mapping(op.ledger, run, (FILE, MEMBER), target)
    lines = [f"de-identified on the way; {plural(added, 'new mapping row')}"]
    return lines + verified_lines(op.ledger, run, (FILE, MEMBER))


def upload_summary(run: RunInfo, ledger: Ledger) -> list[str]:
    """Files seen, DICOM, sent, already there, not DICOM, failed, MB (compressed TARs and nested
    archives counted inside), and the special files skipped."""
    tally = ledger.tally(run.id)
    sent = sum(
        n
        for (kind, status, note), n in tally.items()
        if kind in (FILE, MEMBER) and status == DONE and not note
    )
    already = sum(n for (kind, _, note), n in tally.items() if kind in (FILE, MEMBER) and note == ALREADY)
    not_dicom = sum(n for (kind, _, note), n in tally.items() if kind in (FILE, MEMBER) and note == NOT_DICOM)
    failed = sum(n for (kind, status, _), n in tally.items() if kind in (FILE, MEMBER) and status == FAILED)
    # an archive file of the inputs counts here; an archive member counts itself in its result below
    archives = sum(
        n for (kind, _, note), n in tally.items() if kind == FILE and note in (ARCHIVE, READ_INSIDE)
    )
    # runs recorded before READ_INSIDE existed noted such archives ARCHIVE: their counts tell them apart
    read_inside = [
        *ledger.items(run.id, status=DONE, note=READ_INSIDE),
        *ledger.items(run.id, status=DONE, note=ARCHIVE),
        *ledger.items(run.id, status=FAILED),  # what an archive sent before one of its members failed
    ]
    for item in read_inside:
        counts = item.result or {}
        if item.kind in (FILE, MEMBER) and "sent" in counts:
            # a compressed TAR or an archive inside an archive, done member by member inside its item
            sent += counts["sent"]
            already += counts["already"]
            not_dicom += counts["not_dicom"]
            archives += counts.get("archives", 0)
            if item.status == FAILED:  # its failed members in place of the archive itself
                failed += counts.get("failed", 1) - 1
                archives += 1 if item.kind == FILE else 0
    seen = sent + already + not_dicom + failed
    opened = f" (with {plural(archives, 'archive')} opened)" if archives else ""
    lines = [
        f"files seen {seen}{opened}: DICOM {sent + already}, sent {sent}, already there {already}, "
        f"not DICOM {not_dicom}, failed {failed}; {run.bytes / 1e6:.1f} MB sent"
    ]
    special: dict[str, int] = {}
    for (kind, _, note), n in tally.items():
        if kind == FILE and note and note.startswith(NOT_REGULAR):
            what = note.removeprefix(NOT_REGULAR).strip(" ()")
            special[what] = special.get(what, 0) + n
    if special:  # not counted above: no file's data was there to see
        kinds = ", ".join(f"{what} {n}" for what, n in sorted(special.items()))
        lines.append(f"skipped, not regular files (never opened): {kinds}")
    unlisted = sum(n for (kind, status, _), n in tally.items() if kind == FOLDER and status == FAILED)
    if unlisted:  # their files are not counted above: nobody knows how many there are
        lines.append(
            f"folders that could not be listed: {unlisted} (see `pacsflow run show {run.id} --failed`)"
        )
    return lines
