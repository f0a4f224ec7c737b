"""The verifier: reads de-identified files as a stranger would and fails loudly on anything identifying
left in them, on dates or UIDs not changed, on references that lead nowhere, and on over-removal."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from pacsflow.anonymize.dates import shift_date
from pacsflow.anonymize.deidentify import _name_parts
from pacsflow.anonymize.mapping import originals
from pacsflow.anonymize.profile import OPTIONS
from pacsflow.anonymize.search import encodings_of, found_in
from pacsflow.ledger import Ledger
from pacsflow.ledger.schema import mapping

_MIN_SEARCHED = 4
#: what an image must still have after de-identification (the profile keeps all of it)
_ALWAYS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality")
_IMAGE = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")
#: single-frame cross-sectional images: their geometry must survive
_GEOMETRY_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.128": "PET",
}
_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
_CODE_OPTIONS = {code: name for name, (code, _) in OPTIONS.items()}


@dataclass
class Finding:
    """One problem in one file. WHERE is a file name or an instance ID; PROBLEM never quotes a value."""

    where: str
    problem: str


@dataclass
class Report:
    """What the verifier found over all the files it read."""

    files: int = 0
    not_dicom: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def lines(self, limit: int = 20) -> list[str]:
        shown = [f"{finding.where}: {finding.problem}" for finding in self.findings[:limit]]
        if len(self.findings) > limit:
            shown.append(f"... and {len(self.findings) - limit} more")
        return shown


class Verifier:
    """Checks de-identified files; with a LEDGER, against every original value its mapping records."""

    def __init__(self, ledger: Ledger | None = None) -> None:
        self.ledger = ledger
        self._originals: dict[str, dict[str, set[str]]] = {}
        self._sops: set[str] = set()
        self._references: list[tuple[str, str]] = []

    def check(self, data: bytes, where: str) -> list[str] | None:
        """Problems of one file (empty: clean); None when it is not DICOM at all."""
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        stream = io.BytesIO(data)
        try:
            ds = dcmread(stream, stop_before_pixels=True, force=True)
        except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError):
            return None
        if "SOPInstanceUID" not in ds:
            return None
        has_pixels = stream.tell() < len(data)
        problems: list[str] = []
        if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
            problems.append("PatientIdentityRemoved is not YES")
        options = self._options(ds)
        problems += self._private(ds, options)
        problems += self._kept(ds, has_pixels)
        sop = str(ds.SOPInstanceUID)
        self._sops.add(sop)
        self._references += [(where, uid) for uid in _instance_references(ds)]
        if self.ledger is not None:
            problems += self._against_mapping(ds, data, sop)
        return problems

    def report(self, files: Iterable[tuple[str, bytes]]) -> Report:
        """Check every (name, bytes) of FILES, then whether each reference leads to an instance."""
        report = Report()
        for where, data in files:
            problems = self.check(data, where)
            if problems is None:
                report.not_dicom += 1
                continue
            report.files += 1
            report.findings += [Finding(where, problem) for problem in problems]
        report.findings += self.dangling()
        return report

    def dangling(self) -> list[Finding]:
        """References (ReferencedSOPInstanceUID) to no instance checked here nor in the mapping."""
        found = []
        unknown = {uid for _, uid in self._references if uid not in self._sops}
        if unknown and self.ledger is not None:
            unknown -= self._new_sops(unknown)
        for where, uid in self._references:
            if uid in unknown:
                found.append(Finding(where, "a reference (ReferencedSOPInstanceUID) leads to no instance"))
        self._references.clear()
        return found

    def _new_sops(self, uids: set[str]) -> set[str]:
        assert self.ledger is not None
        known: set[str] = set()
        listed = sorted(uids)
        with self.ledger.engine.connect() as conn:
            for start in range(0, len(listed), 500):
                chunk = listed[start : start + 500]
                known.update(
                    conn.execute(
                        select(mapping.c.new_sop_uid).where(mapping.c.new_sop_uid.in_(chunk))
                    ).scalars()
                )
        return known

    @staticmethod
    def _options(ds: Any) -> set[str]:
        """The options the file says were applied (DeidentificationMethodCodeSequence)."""
        codes = {str(item.get("CodeValue", "")) for item in ds.get("DeidentificationMethodCodeSequence", [])}
        return {_CODE_OPTIONS[code] for code in codes if code in _CODE_OPTIONS}

    @staticmethod
    def _private(ds: Any, options: set[str]) -> list[str]:
        from pacsflow.anonymize.profile import load_profile

        profile = load_profile(("retain_safe_private",)) if "retain_safe_private" in options else None
        left = 0
        for elem in ds.iterall():
            group, element = int(elem.tag) >> 16, int(elem.tag) & 0xFFFF
            if group % 2 == 0 or element < 0x1000:
                continue
            if profile is not None:
                creator = _creator(ds, group, element)
                if creator is not None and profile.is_safe_private(creator, group, element):
                    continue
            left += 1
        return [f"{left} private attributes left"] if left else []

    @staticmethod
    def _kept(ds: Any, has_pixels: bool) -> list[str]:
        """Over-removal: what the profile keeps must still be there."""
        from pydicom.uid import UID

        problems = [f"{name} removed" for name in _ALWAYS if not str(ds.get(name, "") or "").strip()]
        sop_class = str(ds.get("SOPClassUID", ""))
        is_image = UID(sop_class).name.endswith("Image Storage") if sop_class else False
        if is_image or has_pixels:
            if not has_pixels:
                problems.append("pixel data removed")
            problems += [f"{name} removed" for name in _IMAGE if name not in ds]
        if sop_class in _GEOMETRY_CLASSES:
            problems += [f"{name} removed (image geometry)" for name in _GEOMETRY if name not in ds]
        return problems

    def _against_mapping(self, ds: Any, data: bytes, sop: str) -> list[str]:
        assert self.ledger is not None
        problems: list[str] = []
        pseudonym = str(ds.get("PatientID", "") or "")
        values = self._originals.get(pseudonym)
        if values is None:
            values = self._originals[pseudonym] = originals(self.ledger, pseudonym)
        searched = [
            part
            for value in values["patient"]
            for part in _name_parts(value)
            if len(part.encode()) >= _MIN_SEARCHED
        ]
        leaked = found_in(data, searched, encodings_of(ds))
        if leaked is not None:
            problems.append("an original identifying value (patient ID, name or accession) is in the file")
        uids = {str(elem.value) for elem in ds.iterall() if elem.VR == "UI" and elem.VM == 1}
        if uids & values["uids"]:
            problems.append("an original UID is still in the file (UIDs not remapped)")
        row = self._row(sop)
        if row is None:
            problems.append("not in the mapping: de-identified by another tool or another ledger?")
            return problems
        problems += self._dates(ds, row)
        return problems

    def _row(self, sop: str) -> Any:
        assert self.ledger is not None
        with self.ledger.engine.connect() as conn:
            return conn.execute(
                select(mapping.c.study_date, mapping.c.date_shift)
                .where(mapping.c.new_sop_uid == sop)
                .limit(1)
            ).first()

    @staticmethod
    def _dates(ds: Any, row: Any) -> list[str]:
        original, shift = row.study_date or "", row.date_shift or 0
        if not original:
            return []
        written = str(ds.get("StudyDate", "") or "")
        how = str(ds.get("LongitudinalTemporalInformationModified", "") or "").upper()
        if how == "MODIFIED" and written != shift_date(original, shift):
            return ["StudyDate not shifted as the mapping says"]
        if how == "REMOVED" and written:
            return ["StudyDate kept although dates were to be removed"]
        if how not in ("MODIFIED", "UNMODIFIED", "REMOVED"):
            return ["LongitudinalTemporalInformationModified missing: were the dates handled?"]
        return []


def _instance_references(ds: Any) -> list[str]:
    """ReferencedSOPInstanceUIDs at any depth that name a stored instance (their ReferencedSOPClassUID is a
    storage class): references to a patient or a study (detached management classes) are not instances."""
    from pydicom.uid import UID

    found: list[str] = []
    if "ReferencedSOPInstanceUID" in ds:
        sop_class = str(ds.get("ReferencedSOPClassUID", "") or "")
        if not sop_class or UID(sop_class).name.endswith("Storage") or not UID(sop_class).is_valid:
            value = ds.ReferencedSOPInstanceUID
            found += (
                [str(v) for v in value]
                if isinstance(value, list | tuple) or value.__class__.__name__ == "MultiValue"
                else [str(value)]
            )
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found += _instance_references(item)
    return found


def _creator(ds: Any, group: int, element: int) -> str | None:
    """The private creator of (GROUP, ELEMENT), looked up at the top level (where our files keep them)."""
    elem = ds.get((group, element >> 8))
    return str(elem.value) if elem is not None else None
