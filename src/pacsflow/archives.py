"""Reading DICOM out of ZIP and TAR archives as streams, never extracting to disk; archives inside
archives are read in memory, within bounds that a zip bomb cannot get past."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from pacsflow.dicomfiles import open_regular
from pacsflow.errors import BadInput

ZIP, TAR, COMPRESSED_TAR = "zip", "tar", "compressed-tar"
_COMPRESSION_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
_OPENERS = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}
_FORMATS = {"gz": "gzip", "bz2": "bzip2", "xz": "xz"}
# What a name promises: a file named like an archive that cannot be read as one is a failure, never
# "not DICOM" (that would drop every image in it without a word).
_TAR_NAMES = (".tgz", ".tar.gz", ".tbz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")
_COMPRESSED_NAMES = (".gz", ".bz2", ".xz")
# Errors a damaged compressed stream raises: gzip's BadGzipFile and bz2's are OSErrors
_STREAM_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)
_BLOCK = tarfile.BLOCKSIZE

#: Archives within archives: a file is level 1, an archive among its members level 2, and so on. An
#: archive deeper than this is a failure, not opened (nobody packs scans deeper; a quine or a bomb does).
MAX_NESTING = 3
#: What the nested archives of one item may expand to in all: their members are read into memory.
NESTED_MAX_BYTES = 2 << 30
#: A member that expands more than this many times its stored size is refused as a zip bomb, once it is
#: past RATIO_FLOOR: scans compress some 2 to 20 times, only long runs of one byte go past 200 (deflate
#: tops out near 1000), and below the floor no member can do harm (a blank slice compresses that well).
MAX_RATIO = 200
RATIO_FLOOR = 32 << 20


@dataclass(frozen=True)
class Member:
    """One regular file inside an archive; OFFSET and SIZE locate it in a plain TAR."""

    name: str
    size: int
    offset: int = -1

    @property
    def unsafe(self) -> bool:
        """A name that would escape the folder if extracted (`../`, absolute): suspicious, never read."""
        path = PurePosixPath(self.name.replace("\\", "/"))
        return path.is_absolute() or ".." in path.parts


def archive_kind(head: bytes, path: Path) -> str | None:
    """ZIP, TAR, COMPRESSED_TAR or None (not an archive), from a file's first 512+ bytes and its name.

    Raises BadInput for a file that looks like an archive, by its content or its name, but cannot be
    read as one (truncated, corrupt, or only named like one).
    """
    return _kind(head, path.name, path.name, lambda compression: _holds_tar(path, compression))


def member_archive_kind(data: bytes, name: str, where: str, expansion: Expansion) -> str | None:
    """archive_kind for a member held in memory (DATA, named NAME inside its archive); its decompressed
    bytes count against EXPANSION. Raises BadInput as archive_kind does, or past EXPANSION's bounds."""
    return _kind(
        data[:1024],
        PurePosixPath(name.replace("\\", "/")).name,
        where,
        lambda compression: _bytes_hold_tar(data, compression, where, expansion),
    )


def _kind(head: bytes, name: str, where: str, holds_tar: Callable[[str], bool]) -> str | None:
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return ZIP
    if len(head) >= 262 and head[257:262] == b"ustar":
        return TAR
    name = name.lower()
    compression = _compression(head)
    if compression is None:
        if name.endswith(".zip"):
            return ZIP  # its reader says what is wrong with it
        if name.endswith(".tar"):
            return TAR  # perhaps an old TAR without the "ustar" mark: its reader tells
        if name.endswith(_TAR_NAMES + _COMPRESSED_NAMES):
            raise BadInput("corrupt compressed file (no gzip, bzip2 or xz header)", where=where)
        return None
    if holds_tar(compression):
        return COMPRESSED_TAR
    if name.endswith(_TAR_NAMES):
        raise BadInput(f"{_FORMATS[compression]} file holds no TAR archive", where=where)
    return None  # a whole compressed file of something else (a log, a report)


def _compression(head: bytes) -> str | None:
    return next((kind for magic, kind in _COMPRESSION_MAGIC.items() if head.startswith(magic)), None)


def _holds_tar(path: Path, compression: str) -> bool:
    """True if the decompressed stream starts with a TAR header. Any other stream is read to its end:
    only then is it known to be whole, and not an archive cut before its first header."""
    try:
        with open_regular(path) as fh, _OPENERS[compression](fh, "rb") as stream:
            return _starts_tar(stream)
    except _STREAM_ERRORS as exc:
        raise BadInput(f"corrupt {_FORMATS[compression]} file ({_why(exc)})", where=path.name) from None


def _bytes_hold_tar(data: bytes, compression: str, where: str, expansion: Expansion) -> bool:
    try:
        with _OPENERS[compression](io.BytesIO(data), "rb") as raw:
            return _starts_tar(_Bounded(raw, len(data), where, expansion))
    except _STREAM_ERRORS as exc:
        raise BadInput(f"corrupt {_FORMATS[compression]} file ({_why(exc)})", where=where) from None


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _starts_tar(stream: _Readable) -> bool:
    if stream.read(_BLOCK)[257:262] == b"ustar":
        return True
    while stream.read(1 << 20):
        pass
    return False


def list_zip(path: Path) -> list[Member]:
    try:
        with open_regular(path) as fh, zipfile.ZipFile(fh) as archive:
            return [Member(info.filename, info.file_size) for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise BadInput(f"corrupt ZIP archive ({_why(exc)})", where=path.name) from None


def list_tar(path: Path) -> list[Member]:
    try:
        with open_regular(path) as fh:
            return _list_tar(fh, path.name)
    except OSError as exc:
        raise BadInput(f"corrupt TAR archive ({_why(exc)})", where=path.name) from None


def _list_tar(fh: BinaryIO, where: str) -> list[Member]:
    try:
        with tarfile.open(fileobj=fh, mode="r:") as archive:
            members = [Member(info.name, info.size, info.offset_data) for info in archive if info.isfile()]
            fh.seek(archive.offset)
            end = fh.read(_BLOCK)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadInput(f"corrupt TAR archive ({_why(exc)})", where=where) from None
    if end.count(0) != _BLOCK:
        raise BadInput(f"corrupt TAR archive ({_damaged_after(len(members))})", where=where)
    return members


def _damaged_after(members: int) -> str:
    # tarfile ends its listing quietly at a truncated or damaged header, as if the archive ended there;
    # only a whole archive ends with a block of zeros
    return f"truncated or damaged after {members} member{'s' if members != 1 else ''}"


def _why(exc: BaseException) -> str:
    """An error's reason without the file path an OSError carries (paths may name patients)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def read_tar_member(path: Path, member: Member) -> bytes:
    try:
        with open_regular(path) as fh:
            fh.seek(member.offset)
            data = fh.read(member.size)
    except OSError as exc:
        raise BadInput(f"cannot read archive ({_why(exc)})", where=f"{path.name}!{member.name}") from None
    if len(data) != member.size:
        raise BadInput("archive is truncated", where=f"{path.name}!{member.name}")
    return data


def iter_compressed_tar(path: Path) -> Iterator[tuple[Member, bytes]]:
    """Members of a .tar.gz/.bz2/.xz and their bytes, one after another (one pass, no random access).

    Raises BadInput, after the members read so far, if the archive turns out truncated or corrupt.
    """
    try:
        fh = open_regular(path)
    except OSError as exc:
        raise BadInput(f"cannot read archive ({_why(exc)})", where=path.name) from None
    with fh:
        yield from _iter_tar_stream(fh, path.name)


def _iter_tar_stream(
    fh: BinaryIO, where: str, expansion: Expansion | None = None, stored: int = 0
) -> Iterator[tuple[Member, bytes]]:
    """The members of the compressed TAR in FH, in one pass; with EXPANSION (a nested archive, STORED
    bytes long) its decompressed bytes count against that item's bounds."""
    members = 0
    try:
        compression = _compression(fh.read(8))
        if compression is None:
            raise BadInput("corrupt compressed file (no gzip, bzip2 or xz header)", where=where)
        fh.seek(0)
        # gzip, bz2 and lzma raise on a stream cut short; tarfile's own decompression ("r|gz") stops quietly
        with _OPENERS[compression](fh, "rb") as raw:
            stream: _Readable = raw if expansion is None else _Bounded(raw, stored, where, expansion)
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for info in archive:
                    if not info.isfile():
                        continue
                    extracted = archive.extractfile(info)
                    if extracted is not None:
                        members += 1
                        member = Member(info.name, info.size)
                        # read here, where a stream cut inside this member is reported as such; an unsafe
                        # member is never read (tarfile skips its bytes)
                        yield member, b"" if member.unsafe else extracted.read()
                # a whole archive ends with a full block of zeros, which tarfile has just read
                whole = archive.fileobj.tell() - archive.offset == _BLOCK
            while stream.read(1 << 20):  # the compressed stream's checksum is at its very end
                pass
    except (tarfile.TarError, *_STREAM_ERRORS) as exc:
        raise BadInput(f"corrupt compressed TAR archive ({_why(exc)})", where=where) from None
    if not whole:
        raise BadInput(f"corrupt compressed TAR archive ({_damaged_after(members)})", where=where)


class Expansion:
    """What the nested archives of one item have expanded to so far, and the bounds they must stay in:
    past one, what is left is refused with the reason (a failure), never read and never skipped."""

    def __init__(self) -> None:
        self.left = NESTED_MAX_BYTES

    def take(self, size: int, stored: int, where: str) -> None:
        """Count SIZE bytes about to be read from STORED bytes; raises BadInput past a bound, before."""
        check_ratio(size, stored, where)
        if size > self.left:
            raise BadInput(
                f"nested archives expand past {NESTED_MAX_BYTES >> 20} MB in all; not read", where=where
            )
        self.left -= size


def check_ratio(size: int, stored: int, where: str) -> None:
    """Raises BadInput if SIZE bytes from STORED ones is a ratio only a zip bomb has (see MAX_RATIO)."""
    if size > RATIO_FLOOR and size > MAX_RATIO * max(stored, 1):
        ratio = size // max(stored, 1)
        raise BadInput(
            f"expands {ratio} times ({size >> 20} MB from {stored >> 10} KB): a zip bomb? not read",
            where=where,
        )


class _Bounded:
    """A decompressing stream that raises BadInput once it has expanded past its item's bounds."""

    def __init__(self, stream: _Readable, stored: int, where: str, expansion: Expansion) -> None:
        self.stream = stream
        self.stored = stored
        self.where = where
        self.expansion = expansion
        self.total = 0

    def read(self, size: int = -1, /) -> bytes:
        # never past the bounds by more than a byte in one read: a single read(-1) of a bomb would fill
        # memory before any check could see it
        most = max(RATIO_FLOOR, MAX_RATIO * self.stored) - self.total
        allowed = max(min(self.expansion.left, most), 0) + 1
        data = self.stream.read(allowed if size < 0 else min(size, allowed))
        self.total += len(data)
        check_ratio(self.total, self.stored, self.where)
        self.expansion.take(len(data), len(data), self.where)
        return data


def iter_nested(
    data: bytes, kind: str, where: str, expansion: Expansion
) -> Iterator[tuple[Member, bytes | BadInput]]:
    """The members of an archive held in memory (DATA, itself a member of another archive: WHERE names
    it) and their bytes, or why one cannot be read. Unsafe members come with no bytes, never read.

    Every byte read counts against EXPANSION, and a member past its bounds comes with a BadInput
    instead. Raises BadInput, after the members read so far, if the archive is corrupt.
    """
    if kind == ZIP:
        yield from _zip_members(data, where, expansion)
    elif kind == TAR:
        members = _list_tar(io.BytesIO(data), where)
        for member in members:
            yield member, _tar_member(data, member, f"{where}!{member.name}", expansion)
    else:
        for member, payload in _iter_tar_stream(io.BytesIO(data), where, expansion, len(data)):
            yield member, payload


def _tar_member(data: bytes, member: Member, where: str, expansion: Expansion) -> bytes | BadInput:
    if member.unsafe:
        return b""
    if member.offset + member.size > len(data):
        return BadInput("archive is truncated", where=where)
    try:
        expansion.take(member.size, member.size, where)  # a copy in memory, if no expansion
    except BadInput as exc:
        return exc
    return data[member.offset : member.offset + member.size]


def _zip_members(data: bytes, where: str, expansion: Expansion) -> Iterator[tuple[Member, bytes | BadInput]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise BadInput(f"corrupt ZIP archive ({_why(exc)})", where=where) from None
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            member = Member(info.filename, info.file_size)
            yield member, b"" if member.unsafe else _zip_member(archive, info, where, expansion)


def _zip_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, expansion: Expansion
) -> bytes | BadInput:
    where = f"{where}!{info.filename}"
    try:
        # the sizes a ZIP declares bound what zipfile reads: checked before a byte is inflated
        expansion.take(info.file_size, info.compress_size, where)
        return archive.read(info)
    except BadInput as exc:
        return exc
    except RuntimeError:  # zipfile's way of saying the member is encrypted
        return BadInput("encrypted member, no password", where=where)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error) as exc:
        return BadInput(f"cannot read member ({_why(exc)})", where=where)


class ZipReader:
    """Reads ZIP members from many threads; each thread keeps its last few archives open (the central
    directory is parsed once, and open files stay few however many archives a run has)."""

    KEEP_OPEN = 4

    def __init__(self) -> None:
        self._local = threading.local()

    def read(self, path: Path, name: str) -> bytes:
        cache: OrderedDict[Path, zipfile.ZipFile] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
        where = f"{path.name}!{name}"
        try:
            archive = cache.get(path)
            if archive is None:
                archive = cache[path] = _open_zip(path)
                while len(cache) > self.KEEP_OPEN:
                    _close_zip(cache.popitem(last=False)[1])
            cache.move_to_end(path)
            info = archive.getinfo(name)
            check_ratio(info.file_size, info.compress_size, where)  # a bomb would be read into memory
            return archive.read(info)
        except KeyError:
            raise BadInput("no such member", where=where) from None
        except RuntimeError:  # zipfile's way of saying the member is encrypted
            raise BadInput("encrypted member, no password", where=where) from None
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error) as exc:
            raise BadInput(f"cannot read member ({_why(exc)})", where=where) from None

    def close(self) -> None:
        """Close this thread's archives (the others close with their threads' objects)."""
        cache = getattr(self._local, "cache", None)
        while cache:
            _close_zip(cache.popitem()[1])


def _open_zip(path: Path) -> zipfile.ZipFile:
    fh = open_regular(path)
    try:
        return zipfile.ZipFile(fh)
    except BaseException:
        fh.close()
        raise


def _close_zip(archive: zipfile.ZipFile) -> None:
    fh = archive.fp  # a ZipFile given an open file leaves it open when it closes
    archive.close()
    if fh is not None:
        fh.close()
