"""Reading DICOM out of ZIP and TAR archives as streams, never extracting to disk."""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return ZIP
    if len(head) >= 262 and head[257:262] == b"ustar":
        return TAR
    name = path.name.lower()
    compression = _compression(head)
    if compression is None:
        if name.endswith(".zip"):
            return ZIP  # its reader says what is wrong with it
        if name.endswith(".tar"):
            return TAR  # perhaps an old TAR without the "ustar" mark: its reader tells
        if name.endswith(_TAR_NAMES + _COMPRESSED_NAMES):
            raise BadInput("corrupt compressed file (no gzip, bzip2 or xz header)", where=path.name)
        return None
    if _holds_tar(path, compression):
        return COMPRESSED_TAR
    if name.endswith(_TAR_NAMES):
        raise BadInput(f"{_FORMATS[compression]} file holds no TAR archive", where=path.name)
    return None  # a whole compressed file of something else (a log, a report)


def _compression(head: bytes) -> str | None:
    return next((kind for magic, kind in _COMPRESSION_MAGIC.items() if head.startswith(magic)), None)


def _holds_tar(path: Path, compression: str) -> bool:
    """True if the decompressed stream starts with a TAR header. Any other stream is read to its end:
    only then is it known to be whole, and not an archive cut before its first header."""
    try:
        with _OPENERS[compression](path, "rb") as stream:
            if stream.read(_BLOCK)[257:262] == b"ustar":
                return True
            while stream.read(1 << 20):
                pass
    except _STREAM_ERRORS as exc:
        raise BadInput(f"corrupt {_FORMATS[compression]} file ({_why(exc)})", where=path.name) from None
    return False


def list_zip(path: Path) -> list[Member]:
    try:
        with zipfile.ZipFile(path) as archive:
            return [Member(info.filename, info.file_size) for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise BadInput(f"corrupt ZIP archive ({_why(exc)})", where=path.name) from None


def list_tar(path: Path) -> list[Member]:
    try:
        with tarfile.open(path, "r:") as archive:
            members = [Member(info.name, info.size, info.offset_data) for info in archive if info.isfile()]
            archive.fileobj.seek(archive.offset)
            end = archive.fileobj.read(_BLOCK)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadInput(f"corrupt TAR archive ({_why(exc)})", where=path.name) from None
    if end.count(0) != _BLOCK:
        raise BadInput(f"corrupt TAR archive ({_damaged_after(len(members))})", where=path.name)
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
        with open(path, "rb") as fh:
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
    members = 0
    try:
        with open(path, "rb") as fh:
            compression = _compression(fh.read(8))
        if compression is None:
            raise BadInput("corrupt compressed file (no gzip, bzip2 or xz header)", where=path.name)
        # gzip, bz2 and lzma raise on a stream cut short; tarfile's own decompression ("r|gz") stops quietly
        with _OPENERS[compression](path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                stream = archive.extractfile(info)
                if stream is not None:
                    members += 1
                    member = Member(info.name, info.size)
                    # read here, where a stream cut inside this member is reported as such; an unsafe
                    # member is never read (tarfile skips its bytes)
                    yield member, b"" if member.unsafe else stream.read()
            # a whole archive ends with a full block of zeros, which tarfile has just read
            whole = archive.fileobj.tell() - archive.offset == _BLOCK
            while raw.read(1 << 20):  # the compressed stream's checksum is at its very end
                pass
    except (tarfile.TarError, *_STREAM_ERRORS) as exc:
        raise BadInput(f"corrupt compressed TAR archive ({_why(exc)})", where=path.name) from None
    if not whole:
        raise BadInput(f"corrupt compressed TAR archive ({_damaged_after(members)})", where=path.name)


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
                archive = cache[path] = zipfile.ZipFile(path)
                while len(cache) > self.KEEP_OPEN:
                    cache.popitem(last=False)[1].close()
            cache.move_to_end(path)
            return archive.read(name)
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
            cache.popitem()[1].close()
