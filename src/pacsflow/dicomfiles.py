"""Finding DICOM files by content (not by extension) and reading their identifying UIDs cheaply."""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pacsflow.errors import BadInput
from pacsflow.orthanc import orthanc_id

_ID_TAGS = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
# An implicit-VR little-endian file without preamble starts with a group 0x0002, 0x0008 or 0x0010 tag.
_IMPLICIT_STARTS = (b"\x02\x00", b"\x08\x00", b"\x10\x00")


@dataclass(frozen=True)
class InstanceUIDs:
    """The four values Orthanc derives its IDs from."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str

    @property
    def instance_id(self) -> str:
        return orthanc_id(self.patient_id, self.study_uid, self.series_uid, self.sop_uid)

    @property
    def study_id(self) -> str:
        return orthanc_id(self.patient_id, self.study_uid)


def looks_like_dicom(head: bytes) -> bool:
    """True for a Part 10 file (`DICM` at 128) or a plausible raw implicit-VR dataset."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) >= 8 and head[:2] in _IMPLICIT_STARTS:
        # element length of a plausible first element is small
        length = int.from_bytes(head[4:8], "little")
        return length < 1024
    return False


def read_uids(data: bytes, where: str = "file") -> InstanceUIDs:
    """The identifying UIDs from a DICOM file's bytes; BadInput if they cannot be read."""
    # imported here: pydicom takes 0.3 s to import, and an upload to an empty server never parses
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_ID_TAGS, force=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise BadInput(f"not readable as DICOM ({type(exc).__name__}: {exc})", where=where) from None
    values = [str(getattr(ds, tag, "") or "").strip() for tag in _ID_TAGS]
    missing = [tag for tag, value in zip(_ID_TAGS[1:], values[1:], strict=True) if not value]
    if missing:
        raise BadInput(f"DICOM header lacks {', '.join(missing)} (truncated or not an image)", where=where)
    return InstanceUIDs(*values)


@dataclass(frozen=True)
class Unlisted:
    """A folder whose contents could not be listed, and why: a failure to record, never to skip."""

    path: Path
    reason: str


def iter_files(paths: list[Path]) -> Iterator[Path | Unlisted]:
    """Every file under PATHS that is not a folder, recursively, in a stable order; symlinked folders are
    not followed. That includes FIFOs, sockets, devices and broken symlinks: open_regular says what they
    are when their item is done, so that each is reported rather than dropped here unseen.

    A folder that cannot be listed (permissions, a path too long, gone meanwhile) comes as an Unlisted
    in its place: its files are unknown, and silence would lose them.
    """
    for path in paths:
        if path.is_dir():
            yield from _walk(path)
        else:  # a file, or a FIFO or device named on the command line: never walked as a folder
            yield path


def _walk(top: Path) -> Iterator[Path | Unlisted]:
    unlisted: list[Unlisted] = []

    def note(exc: OSError) -> None:
        folder = Path(exc.filename) if exc.filename else top
        unlisted.append(Unlisted(folder, exc.strerror or type(exc).__name__))

    for dirpath, dirnames, filenames in os.walk(top, onerror=note, followlinks=False):
        yield from unlisted  # os.walk reports a folder it cannot list just before it moves on
        unlisted.clear()
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name
    yield from unlisted


class NotRegular(OSError):
    """A FIFO, socket or device: no file's data to read. Found by stat, so it is never opened: opening a
    FIFO waits for a writer that may never come, and reading a device may never end."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"not a regular file ({kind})")
        self.kind = kind


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _check_regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    raise NotRegular(next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "special file"))


def open_regular(path: Path | str) -> BinaryIO:
    """PATH open for reading, if it is a regular file (symlinks followed).

    Raises NotRegular for a FIFO, socket or device (never opened), IsADirectoryError for a folder, and
    the OSError of stat or open otherwise (FileNotFoundError for a broken symlink too: see broken_link).
    """
    _check_regular(os.stat(path).st_mode)
    # O_NONBLOCK: a FIFO put in the file's place since the stat above is opened without waiting for a
    # writer, and fstat then tells what was opened. A regular file reads the same either way.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        _check_regular(os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def broken_link(path: Path) -> str | None:
    """Where PATH points if it is a symlink to nothing, else None: a link to a missing file says more
    about where the data went (an unmounted drive, a moved folder) than "file vanished"."""
    try:
        if path.is_symlink() and not path.exists():
            return os.readlink(path)
    except OSError:
        return None
    return None


def write_atomically(target: Path, data: bytes) -> None:
    """DATA at TARGET under a temporary name in the same folder first, then one rename: a reader never
    sees half a file, and a killed run leaves a dot-file, never a truncated one under TARGET's name.
    The temporary name is unique per call (two threads or processes may write the same target).
    Raises OSError (the temporary file removed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        with open(temporary, "wb") as fh:
            fh.write(data)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
