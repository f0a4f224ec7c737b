"""Roster CSVs (e.g. Final.csv): read, shortlist by status, rewrite atomically in their own format."""

from __future__ import annotations

import csv
import fcntl
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
            status = self.cell(row, status_column)
            if status.strip() and not same_value(status, "0"):
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
    """Only one process at a time reads, changes and rewrites a roster (e.g. two runs with other --where)."""
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def merge_error_rows(path: Path, header: list[str], rows: list[list[str]], fmt: CsvFormat) -> None:
    """Add rows to an errors CSV (mode 0600: it names patients), once each, keeping earlier ones."""
    existing: list[list[str]] = []
    if path.exists():
        existing = Roster.load(path, []).rows
    seen = {tuple(row) for row in existing}
    merged = existing + [row for row in rows if tuple(row) not in seen]
    table = Roster(path, header, merged, CsvFormat("utf-8", fmt.delimiter, fmt.lineterminator))
    atomic_write(path, table.render(), mode=0o600)
