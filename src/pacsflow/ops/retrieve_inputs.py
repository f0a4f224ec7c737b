"""What retrieve starts from: a file of PatientIDs, and a user's function that picks patients."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pacsflow.errors import ConfigError

#: header names of the column that holds the PatientID (seed 000's rosters call it UHID)
_ID_COLUMNS = ("patientid", "patient_id", "patient id", "uhid", "mrn", "id")

Selector = Callable[[Mapping[str, str]], Any]


def read_patient_list(path: Path) -> list[str]:
    """PatientIDs from PATH, in order, each once: a CSV with a PatientID (or UHID, MRN) column, or one ID
    per line (the first field of a line). Raises ConfigError when it cannot be read or holds none."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--patients {path}: cannot read it ({_why(exc)})") from None
    lines = text.splitlines()
    if lines and lines[0].replace(" ", "").casefold().startswith("sep="):  # Excel's "sep=;" line
        delimiter, lines = lines[0].split("=", 1)[1][:1] or ",", lines[1:]
    else:
        delimiter = _delimiter(lines)
    rows = [row for row in csv.reader(lines, delimiter=delimiter) if any(cell.strip() for cell in row)]
    if not rows:
        raise ConfigError(f"--patients {path}: no PatientID in it")
    header = [cell.strip().casefold() for cell in rows[0]]
    column = next((header.index(name) for name in _ID_COLUMNS if name in header), None)
    body = rows[1:] if column is not None else rows
    column = column or 0
    found = [row[column].strip() for row in body if len(row) > column and row[column].strip()]
    if not found:
        raise ConfigError(f"--patients {path}: no PatientID in it")
    return list(dict.fromkeys(found))


def _delimiter(lines: list[str]) -> str:
    """The CSV's delimiter (a spreadsheet may write `;` or a tab); a one-column file has none: `,`."""
    sample = "\n".join(lines[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def load_selector(spec: str) -> Selector:
    """The function SPEC names: `package.module:function`, or `path/to/file.py:function`. It is called
    with each patient's attributes (PatientID, PatientName, PatientBirthDate, PatientSex) and keeps the
    patient when it returns a true value. Raises ConfigError when it cannot be loaded."""
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            loader = importlib.util.spec_from_file_location(f"pacsflow_select_{path.stem}", path)
            if loader is None or loader.loader is None:
                raise ImportError(f"not a Python file: {where}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # a module beside the user, as `python -m` finds it
            module = importlib.import_module(where)
    except Exception as exc:  # any error of the user's module: say which, do not show a traceback
        raise ConfigError(f"--select {spec}: cannot load {where} ({_why(exc)})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"--select {spec}: {where} has no function {name!r}")
    return function


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
