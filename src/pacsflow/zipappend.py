"""ZIP archives built entry by entry as instances arrive, in any order and across runs: stored entries
appended to NAME.part, the central directory written and the file renamed once every entry is there."""

# Why not zipfile: it writes an archive in one go from one open handle and cannot reopen one that lacks
# its central directory, which is what a run killed mid-archive leaves. Here every entry is a complete
# local header and its bytes, flushed before the item that wrote it counts as done; a later process
# reads those headers back (a torn last entry is cut off) and goes on appending. The format is
# APPNOTE's, ZIP64 where sizes or offsets pass 4 GiB; tests read every archive back with zipfile.

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")
_END64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<IIQI")
_ZIP64_EXTRA = 0x0001
_LOCAL_SIGNATURE, _CENTRAL_SIGNATURE = 0x04034B50, 0x02014B50
_END_SIGNATURE, _END64_SIGNATURE, _LOCATOR64_SIGNATURE = 0x06054B50, 0x06064B50, 0x07064B50
_UTF8_NAMES = 0x0800
_STORED = 0
_VERSION, _VERSION64 = 20, 45
_MADE_BY_UNIX = 3 << 8
_FILE_MODE = 0o100644 << 16  # a regular file, rw-r--r--, in the high half of the external attributes
_MAX32 = 0xFFFFFFFF
_MAX16 = 0xFFFF
PART = ".part"


@dataclass(frozen=True)
class Entry:
    """One complete entry of an archive being built."""

    name: str
    offset: int  # of its local header
    size: int
    crc: int
    dos_time: int
    dos_date: int


def part_of(final: Path) -> Path:
    """Where the archive FINAL is built until it is complete."""
    return final.with_name(final.name + PART)


def _dos_time(now: float) -> tuple[int, int]:
    t = time.localtime(now)
    year = max(1980, t.tm_year)
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((year - 1980) << 9) | (
        t.tm_mon << 5
    ) | t.tm_mday


def local_header(name: str, size: int, crc: int, dos_time: int, dos_date: int) -> bytes:
    encoded = name.encode("utf-8")
    extra = b""
    stored_size = size
    if size >= _MAX32:  # ZIP64: both sizes in the extra field
        extra = struct.pack("<HHQQ", _ZIP64_EXTRA, 16, size, size)
        stored_size = _MAX32
    version = _VERSION64 if extra else _VERSION
    header = _LOCAL.pack(
        _LOCAL_SIGNATURE, version, _UTF8_NAMES, _STORED, dos_time, dos_date, crc, stored_size, stored_size,
        len(encoded), len(extra),
    )  # fmt: skip
    return header + encoded + extra


def scan(path: Path, start: int = 0, *, verify: bool = False) -> tuple[list[Entry], int]:
    """The complete entries of PATH (an archive being built) from offset START, and where they end: a
    torn entry, anything that is not a local header, or (with VERIFY) an entry whose bytes do not match
    their CRC ends the scan."""
    entries: list[Entry] = []
    size = path.stat().st_size
    at = start
    with open(path, "rb") as fh:
        while at + _LOCAL.size <= size:
            fh.seek(at)
            fields = _LOCAL.unpack(fh.read(_LOCAL.size))
            signature, _, flags, method, dos_time, dos_date, crc, stored, _, name_length, extra_length = (
                fields
            )
            if signature != _LOCAL_SIGNATURE or method != _STORED:
                break
            tail = fh.read(name_length + extra_length)
            if len(tail) < name_length + extra_length:
                break
            name = tail[:name_length].decode("utf-8" if flags & _UTF8_NAMES else "cp437")
            entry_size = _zip64_size(tail[name_length:]) if stored == _MAX32 else stored
            if entry_size is None:
                break
            end = at + _LOCAL.size + name_length + extra_length + entry_size
            if end > size or (verify and _crc_of(fh, entry_size) != crc):
                break
            entries.append(Entry(name, at, entry_size, crc, dos_time, dos_date))
            at = end
    return entries, at


def _crc_of(fh: IO[bytes], size: int) -> int:
    """The CRC-32 of the next SIZE bytes of FH, read in pieces (an entry may be gigabytes)."""
    crc = 0
    while size > 0:
        chunk = fh.read(min(size, 1 << 20))
        if not chunk:
            return -1
        crc = zlib.crc32(chunk, crc)
        size -= len(chunk)
    return crc


def _zip64_size(extra: bytes) -> int | None:
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == _ZIP64_EXTRA and length >= 8:
            return struct.unpack_from("<Q", extra, at + 4)[0]
        at += 4 + length
    return None


class ZipBuilder:
    """One archive being built at part_of(FINAL) by any number of threads, and processes: every change
    to the file holds an exclusive lock on it, and each process reads back what the others appended.
    Entries are appended once each, by name; close() writes the central directory of the entries asked
    for and renames the file to FINAL."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.part = part_of(final)
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] | None = None  # read from the part file on first use
        self._end = 0  # where the entries read so far end

    def names(self) -> set[str]:
        with self._lock:
            return set(self._current())

    def holds(self, name: str) -> bool:
        """Whether entry NAME is in the part file (without copying every name: asked once per entry)."""
        with self._lock:
            return name in self._current()

    def append(self, name: str, data: bytes | memoryview) -> bool:
        """DATA as entry NAME, flushed to the file before this returns; False when NAME is there
        already (a retried item). Raises OSError (the disk is full: the file is cut back to its last
        complete entry)."""
        crc = zlib.crc32(data)  # outside the lock: the slow part, and it needs nothing shared
        with self._lock:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            with open(self.part, "a+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)  # another process of the same run may append too
                entries = self._current(fh)
                if name in entries:
                    return False
                dos_time, dos_date = _dos_time(time.time())
                header = local_header(name, len(data), crc, dos_time, dos_date)
                try:
                    fh.write(header)
                    fh.write(data)
                    fh.flush()
                except OSError:
                    fh.truncate(self._end)
                    raise
                entries[name] = Entry(name, self._end, len(data), crc, dos_time, dos_date)
                self._end += len(header) + len(data)
        return True

    def _current(self, locked: IO[bytes] | None = None) -> dict[str, Entry]:
        """The complete entries of the part file: all of them read (their CRCs checked: a leftover file
        may hold damaged bytes) the first time, then only what other processes appended since. A torn or
        damaged tail is cut off when this thread holds the file's lock (LOCKED), and left alone
        otherwise: another process may be writing it."""
        try:
            size = self.part.stat().st_size
        except FileNotFoundError:
            self._entries, self._end = {}, 0
            return self._entries
        if self._entries is not None and size == self._end:
            return self._entries
        if self._entries is None or size < self._end:  # first look, or the file was made anew
            if locked is None:  # what the checked scan cuts off must go now, under the file's lock
                with open(self.part, "r+b") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                    return self._current(fh)
            self._entries, self._end = {}, 0
            found, end = scan(self.part, verify=True)
        else:
            found, end = scan(self.part, self._end)
        for entry in found:
            self._entries.setdefault(entry.name, entry)  # a name written twice: the first counts
        self._end = end
        if end < size and locked is not None:
            locked.truncate(end)
        return self._entries

    def close(self, names: Iterable[str]) -> int:
        """Write the central directory of NAMES (all appended before) in the order given, and rename the
        archive to FINAL. Returns its size. Raises KeyError for a name never appended, OSError."""
        with self._lock:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            with open(self.part, "a+b") as fh:  # made here when no entry was ever appended
                fcntl.flock(fh, fcntl.LOCK_EX)
                entries = self._current(fh)
                chosen = [entries[name] for name in names]
                fh.truncate(self._end)
                fh.write(central_directory(chosen, self._end))
                fh.flush()
                os.fsync(fh.fileno())
                size = fh.tell()
                os.replace(self.part, self.final)  # under the lock: no process appends to a closed file
            self._entries, self._end = None, 0
        return size


def central_directory(entries: list[Entry], start: int) -> bytes:
    """The central directory of ENTRIES and the end records, for a directory starting at START."""
    parts: list[bytes] = []
    for entry in entries:
        encoded = entry.name.encode("utf-8")
        big: list[int] = []
        size = offset = 0
        if entry.size >= _MAX32:
            big += [entry.size, entry.size]
            size = _MAX32
        else:
            size = entry.size
        if entry.offset >= _MAX32:
            big.append(entry.offset)
            offset = _MAX32
        else:
            offset = entry.offset
        extra = struct.pack(f"<HH{len(big)}Q", _ZIP64_EXTRA, 8 * len(big), *big) if big else b""
        version = _VERSION64 if big else _VERSION
        parts.append(
            _CENTRAL.pack(
                _CENTRAL_SIGNATURE,
                _MADE_BY_UNIX | version,
                version,
                _UTF8_NAMES,
                _STORED,
                entry.dos_time,
                entry.dos_date,
                entry.crc,
                size,
                size,
                len(encoded),
                len(extra),
                0,
                0,
                0,
                _FILE_MODE,
                offset,
            )
            + encoded
            + extra
        )
    directory = b"".join(parts)
    count, length = len(entries), len(directory)
    end = b""
    if count >= _MAX16 or start >= _MAX32 or length >= _MAX32:
        end64_at = start + length
        end += _END64.pack(
            _END64_SIGNATURE, 44, _MADE_BY_UNIX | _VERSION64, _VERSION64, 0, 0, count, count, length, start
        )
        end += _LOCATOR64.pack(_LOCATOR64_SIGNATURE, 0, end64_at, 1)
    end += _END.pack(
        _END_SIGNATURE,
        0,
        0,
        min(count, _MAX16),
        min(count, _MAX16),
        min(length, _MAX32),
        min(start, _MAX32),
        0,
    )
    return directory + end
