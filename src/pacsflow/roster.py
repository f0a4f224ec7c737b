"""Roster CSVs (e.g. Final.csv): read, shortlist by status, rewrite atomically in their own format."""

from __future__ import annotations

import csv
import fcntl
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from pacsflow.errors import ConfigError


@dataclass(frozen=True)
class CsvFormat:
    """How a CSV file was written, so that rewriting it changes nothing but the cells we set."""

    encoding: str = "utf-8"
    delimiter: str = ","
    lineterminator: str = "\n"


def sniff_format(raw: bytes) -> CsvFormat:
    if raw.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
    else:
        try:
            raw.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            encoding = "cp1252"
    text = raw.decode(encoding, errors="replace")
    first_line = text.splitlines()[0] if text else ""
    delimiter = max((",", ";", "\t"), key=first_line.count) if first_line else ","
    if first_line.count(delimiter) == 0:
        delimiter = ","
    lineterminator = "\r\n" if "\r\n" in text[: len(first_line) + 2] else "\n"
    return CsvFormat(encoding, delimiter, lineterminator)


def same_value(cell: str, wanted: str) -> bool:
    """'1' matches '1', '1.0' and ' 1 '; other text compares exactly after trimming."""
    cell, wanted = cell.strip(), wanted.strip()
    try:
        return float(cell) == float(wanted)
    except ValueError:
        return cell == wanted


def is_done(status: str) -> bool:
    """A status cell that marks its row done: anything but empty or 0."""
    return bool(status.strip()) and not same_value(status, "0")


class Roster:
    """A CSV with a header row; cells are strings; every row and column is kept as it was."""

    def __init__(self, path: Path, header: list[str], rows: list[list[str]], fmt: CsvFormat) -> None:
        self.path = path
        self.header = header
        self.rows = rows
        self.format = fmt

    @classmethod
    def load(cls, path: Path, required: list[str]) -> Roster:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"roster not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        fmt = sniff_format(raw)
        reader = csv.reader(
            io.StringIO(raw.decode(fmt.encoding, errors="surrogateescape"), newline=""),
            delimiter=fmt.delimiter,
        )
        try:
            header = next(reader)
        except StopIteration:
            raise ConfigError(f"{path}: empty file, expected a header row") from None
        except csv.Error as exc:
            raise ConfigError(f"{path}: not a readable CSV ({exc})") from None
        header = [name.strip() for name in header]
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise ConfigError(f"{path}: malformed CSV at line {reader.line_num} ({exc})") from None
        missing = [name for name in required if name not in header]
        if missing:
            raise ConfigError(
                f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(header)})"
            )
        return cls(path, header, rows, fmt)

    def index(self, column: str) -> int:
        return self.header.index(column)

    def cell(self, row: list[str], column: str) -> str:
        position = self.index(column)
        return row[position] if position < len(row) else ""

    def set_cell(self, row: list[str], column: str, value: str) -> None:
        position = self.index(column)
        if position >= len(row):
            row.extend([""] * (position + 1 - len(row)))
        row[position] = value

    def shortlist(self, status_column: str, where: dict[str, str]) -> list[int]:
        """Indexes of rows not yet done (status 0 or empty) that meet every WHERE condition."""
        chosen = []
        for number, row in enumerate(self.rows):
            if not any(cell.strip() for cell in row):
                continue
            if is_done(self.cell(row, status_column)):
                continue
            if all(same_value(self.cell(row, column), value) for column, value in where.items()):
                chosen.append(number)
        return chosen

    def render(self) -> bytes:
        buffer = io.StringIO(newline="")
        writer = csv.writer(
            buffer, delimiter=self.format.delimiter, lineterminator=self.format.lineterminator
        )
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return buffer.getvalue().encode(self.format.encoding, errors="surrogateescape")

    def save(self) -> None:
        """Atomically replace the file (temp file, fsync, rename); the original is kept once as .bak."""
        backup = self.path.with_name(self.path.name + ".bak")
        if not backup.exists():
            shutil.copy2(self.path, backup)
        atomic_write(self.path, self.render(), mode=self.path.stat().st_mode & 0o777)


@contextmanager
def roster_lock(path: Path) -> Iterator[None]:
    """Only one process at a time reads, changes and rewrites a roster (e.g. two runs with other --where).

    The lock is a file beside the roster (`.Final.csv.lock`), removed by its holder before it lets go,
    so that none is left behind. Whoever was waiting then holds a lock on a file no longer there: it
    sees that the name leads elsewhere, or nowhere, and starts again; so two processes can never each
    hold a lock on a different file of that name at once.
    """
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            break
        os.close(fd)  # it was removed while we waited: closing lets go of a lock nobody else wants
    try:
        yield
    finally:
        # removed while still held: a newcomer creates a new file, a waiter sees this one is gone
        with suppress(OSError):
            lock.unlink()
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write DATA to PATH so that a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


ERROR_COLUMN = "Error"


def update_errors(
    path: Path, roster: Roster, status_column: str, errors: list[tuple[list[str], str]]
) -> None:
    """Bring an errors CSV (mode 0600: it names patients) up to date with ROSTER, as it is now.

    ERRORS are roster rows and why each failed: a row's new reason replaces what the file said about it
    before, and a row the roster now marks done (by a later run, or by hand) leaves the file: it lists
    what is wrong now, not what once was. Rows of other rosters (another header) are kept as they are.
    Call it holding the roster's lock. The file is written only when what it says changes.
    """
    header = [*roster.header, ERROR_COLUMN]
    width, status = len(roster.header), roster.index(status_column)

    def cells(row: list[str]) -> list[str]:
        return (row[:width] + [""] * width)[:width]

    def same_row(row: list[str]) -> tuple[str, ...]:
        # the roster row, whatever its status: it was 0 when listed, and is 1 once the row is done
        key = cells(row)
        key[status] = ""
        return tuple(key)

    before: tuple[list[str], list[list[str]]] | None = None
    ours: list[list[str]] = []
    others: list[list[str]] = []
    if path.exists():
        table = Roster.load(path, [])
        before = (table.header, table.rows)
        if table.header == header:
            ours = table.rows
        else:  # not this roster's errors (another roster, an older file): keep them, and add ours
            others = table.rows
    done = {same_row(row) for row in roster.rows if is_done(roster.cell(row, status_column))}
    new = {same_row(row): [*cells(row), reason] for row, reason in errors}
    replaced = done | set(new)
    rows = list(others)
    for row in [*(row for row in ours if same_row(row) not in replaced), *new.values()]:
        if row not in rows:
            rows.append(row)
    if before == (header, rows) or (before is None and not rows):
        return  # nothing changed, and no empty file where there was none
    fmt = CsvFormat("utf-8", roster.format.delimiter, roster.format.lineterminator)
    atomic_write(path, Roster(path, header, rows, fmt).render(), mode=0o600)
