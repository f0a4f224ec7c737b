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
from typing import IO

from pacsflow.errors import BadInput

ZIP, TAR, COMPRESSED_TAR = "zip", "tar", "compressed-tar"
_COMPRESSION_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
_OPENERS = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}


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
    """ZIP, TAR, COMPRESSED_TAR or None, from a file's first 512+ bytes (content, not the name)."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return ZIP
    if len(head) >= 262 and head[257:262] == b"ustar":
        return TAR
    for magic, compression in _COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            try:
                with _OPENERS[compression](path, "rb") as stream:
                    inner = stream.read(512)
            except (OSError, EOFError, lzma.LZMAError):
                return None
            return COMPRESSED_TAR if inner[257:262] == b"ustar" else None
    return None


def list_zip(path: Path) -> list[Member]:
    try:
        with zipfile.ZipFile(path) as archive:
            return [Member(info.filename, info.file_size) for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise BadInput(f"corrupt ZIP archive ({_why(exc)})", where=path.name) from None


def list_tar(path: Path) -> list[Member]:
    try:
        with tarfile.open(path, "r:") as archive:
            return [Member(info.name, info.size, info.offset_data) for info in archive if info.isfile()]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadInput(f"corrupt TAR archive ({_why(exc)})", where=path.name) from None


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


def iter_compressed_tar(path: Path) -> Iterator[tuple[Member, IO[bytes]]]:
    """Members of a .tar.gz/.bz2/.xz one after another, as streams (one pass, no random access)."""
    try:
        with tarfile.open(path, "r|*") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                stream = archive.extractfile(info)
                if stream is not None:
                    yield Member(info.name, info.size), stream
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as exc:
        raise BadInput(f"corrupt compressed TAR archive ({_why(exc)})", where=path.name) from None


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
