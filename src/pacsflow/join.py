"""Joining a CSV to DICOM (R4): each key (PatientID or roster ID) gives tag values written into its files."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from pacsflow.errors import BadInput, ConfigError
from pacsflow.roster import Roster

LABEL = "Label"  # not a DICOM keyword: an Orthanc label (1.12+) put on the study


@dataclass
class JoinTable:
    """KEY -> {DICOM keyword or 'Label': value} from a CSV whose other columns are DICOM keywords."""

    path: Path
    key_column: str
    values: dict[str, dict[str, str]]

    @classmethod
    def load(cls, path: Path, key_column: str) -> JoinTable:
        from pydicom.datadict import dictionary_VR, tag_for_keyword  # lazily: pydicom is slow to import

        table = Roster.load(path, [key_column])
        columns = [name for name in table.header if name != key_column]
        unknown = [name for name in columns if name != LABEL and tag_for_keyword(name) is None]
        if unknown:
            raise ConfigError(
                f"{path}: columns {', '.join(unknown)} are not DICOM keywords (e.g. PatientName, PatientID)"
            )
        for name in columns:
            if name != LABEL and dictionary_VR(tag_for_keyword(name)) in ("SQ", "OB", "OW", "UN"):
                raise ConfigError(f"{path}: column {name} is a {dictionary_VR(tag_for_keyword(name))} tag")
        values: dict[str, dict[str, str]] = {}
        first_line: dict[str, int] = {}
        for line, row in enumerate(table.rows, start=2):
            key = table.cell(row, key_column).strip()
            if not key:
                continue
            entry = {name: table.cell(row, name).strip() for name in columns}
            if key in values and values[key] != entry:
                # the key is a patient ID: say where it is, never what it is
                raise ConfigError(
                    f"lines {first_line[key]} and {line} have the same key (column {key_column}) "
                    "with different values",
                    where=str(path),
                )
            values[key] = entry
            first_line.setdefault(key, line)
        return cls(path, key_column, values)

    @property
    def tag_columns(self) -> list[str]:
        first = next(iter(self.values.values()), {})
        return [name for name in first if name != LABEL]

    def label_for(self, key: str) -> str | None:
        return (self.values.get(key) or {}).get(LABEL) or None

    def apply(self, data: bytes, key: str | None, where: str) -> tuple[bytes, str]:
        """The file with the key's values written in (KEY defaults to its PatientID); returns (bytes, key)."""
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        try:
            ds = dcmread(io.BytesIO(data), force=True)
        except (InvalidDicomError, EOFError, ValueError, TypeError, OSError) as exc:
            raise BadInput(f"not readable as DICOM ({type(exc).__name__}: {exc})", where=where) from None
        key = key if key is not None else str(ds.get("PatientID", "")).strip()
        entry = self.values.get(key)
        if entry is None:
            # never upload a file the join was meant to change (e.g. a pseudonym) unchanged
            raise BadInput(f"no row for its key in {self.path.name} (column {self.key_column})", where=where)
        for keyword, value in entry.items():
            if keyword != LABEL:
                setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        return buffer.getvalue(), key
