"""The verifier: reads de-identified files as a stranger would and fails loudly on anything identifying
left in them, on dates or UIDs not changed, on references that lead nowhere, and on over-removal."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from pacsflow.anonymize.dates import shift_date
from pacsflow.anonymize.deidentify import name_parts
from pacsflow.anonymize.profile import OPTIONS
from pacsflow.anonymize.search import encodings_of, found_in
from pacsflow.ledger import Ledger
from pacsflow.ledger.schema import mapping, pseudonyms

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
DANGLING = "a reference (ReferencedSOPInstanceUID) leads to no instance"


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


@dataclass
class Checked:
    """One file checked: its problems (none: clean), its SOP instance UID, the instances it refers to."""

    problems: list[str]
    sop: str
    references: list[str]


@dataclass
class _Originals:
    """What a de-identified file must not hold, and the dates it should: from a Record or the mapping."""

    values: set[str] = field(default_factory=set)  # patient ID, name (and its parts), accession
    uids: set[str] = field(default_factory=set)
    #: new SOP instance UID -> (original StudyDate, date shift)
    dates: dict[str, tuple[str, int]] = field(default_factory=dict)


class Verifier:
    """Checks de-identified files: against the Record of each (as a run does, before writing), or with a
    LEDGER against every original value its mapping records for the file's pseudonym."""

    def __init__(self, ledger: Ledger | None = None) -> None:
        self.ledger = ledger
        self._by_pseudonym: dict[str, _Originals] = {}

    def check(self, data: bytes, where: str, record: Mapping[str, Any] | None = None) -> Checked | None:
        """DATA checked (against RECORD, a Record.as_dict(), when given); None when it is not DICOM."""
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        stream = io.BytesIO(data)
        try:
            ds = dcmread(stream, stop_before_pixels=True, force=True)
        except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError):
            return None
        if "SOPInstanceUID" not in ds:
            return None
        pixels_at = stream.tell()
        problems: list[str] = []
        if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
            problems.append("PatientIdentityRemoved is not YES")
        scan = _Scan()
        scan.walk(ds)
        options = self._options(ds)
        problems += self._private(ds, scan.private, options)
        problems += _orphan_creators(scan)
        problems += self._kept(ds, pixels_at < len(data))
        sop = str(ds.SOPInstanceUID)
        originals = _of_record(record) if record is not None else self._of_mapping(ds)
        if originals is not None:
            # the Retain UIDs option keeps them on purpose (the file says it was applied)
            uids = set() if "retain_uids" in options else scan.uids
            problems += self._against(ds, _searched_bytes(data, pixels_at), sop, originals, uids)
        return Checked(problems, sop, scan.references)

    def report(self, files: Iterable[tuple[str, bytes]], *, references: bool = True) -> Report:
        """Check every (name, bytes) of FILES, then (with REFERENCES) whether each reference leads to an
        instance among them or in the mapping."""
        report = Report()
        sops: set[str] = set()
        found_references: list[tuple[str, str]] = []
        for where, data in files:
            checked = self.check(data, where)
            if checked is None:
                report.not_dicom += 1
                continue
            report.files += 1
            report.findings += [Finding(where, problem) for problem in checked.problems]
            sops.add(checked.sop)
            found_references += [(where, uid) for uid in checked.references]
        if references:
            report.findings += self.dangling(found_references, sops)
        return report

    def dangling(self, references: Iterable[tuple[str, str]], sops: set[str]) -> list[Finding]:
        """References (where, ReferencedSOPInstanceUID) to no instance among SOPS nor in the mapping."""
        references = list(references)
        unknown = {uid for _, uid in references if uid not in sops}
        if unknown and self.ledger is not None:
            unknown -= self._new_sops(unknown)
        return [Finding(where, DANGLING) for where, uid in references if uid in unknown]

    def _new_sops(self, uids: set[str]) -> set[str]:
        assert self.ledger is not None
        known: set[str] = set()
        listed = sorted(uids)
        with self.ledger.engine.connect() as conn:
            for start in range(0, len(listed), 500):
                chunk = listed[start : start + 500]
                query = select(mapping.c.new_sop_uid).where(mapping.c.new_sop_uid.in_(chunk))
                known.update(conn.execute(query).scalars())
        return known

    def _of_mapping(self, ds: Any) -> _Originals | None:
        """What the mapping holds for the file's pseudonym (read once per patient)."""
        if self.ledger is None:
            return None
        pseudonym = str(ds.get("PatientID", "") or "")
        found = self._by_pseudonym.get(pseudonym)
        if found is None:
            found = self._by_pseudonym[pseudonym] = _read_originals(self.ledger, pseudonym)
        return found

    @staticmethod
    def _options(ds: Any) -> set[str]:
        """The options the file says were applied (DeidentificationMethodCodeSequence)."""
        codes = {str(item.get("CodeValue", "")) for item in ds.get("DeidentificationMethodCodeSequence", [])}
        return {_CODE_OPTIONS[code] for code in codes if code in _CODE_OPTIONS}

    @staticmethod
    def _private(ds: Any, private: list[tuple[Any, int, int]], options: set[str]) -> list[str]:
        """Private elements left, but those the Retain Safe Private option keeps (if the file says so)."""
        from pacsflow.anonymize.profile import load_profile

        profile = load_profile(("retain_safe_private",)) if "retain_safe_private" in options else None
        left = 0
        for parent, group, element in private:
            if profile is not None:
                creator = _creator(parent, group, element)
                if creator is not None and profile.is_safe_private(creator, group, element):
                    continue
            left += 1
        return [f"{left} private attributes left"] if left else []

    @staticmethod
    def _kept(ds: Any, has_pixels: bool) -> list[str]:
        """Over-removal: what the profile keeps must still be there."""
        from pydicom.uid import UID

        problems = [f"{name} removed" for name in _ALWAYS if not _has_value(ds, name)]
        sop_class = str(ds.get("SOPClassUID", ""))
        is_image = UID(sop_class).name.endswith("Image Storage") if sop_class else False
        if is_image or has_pixels:
            if not has_pixels:
                problems.append("pixel data removed")
            problems += [f"{name} removed" for name in _IMAGE if name not in ds]
        if sop_class in _GEOMETRY_CLASSES:
            problems += [f"{name} removed (image geometry)" for name in _GEOMETRY if name not in ds]
        return problems

    @staticmethod
    def _against(ds: Any, searched: bytes, sop: str, originals: _Originals, uids: set[str]) -> list[str]:
        problems: list[str] = []
        parts = [part for value in originals.values for part in name_parts(value)]
        wanted = [part for part in parts if len(part.encode()) >= _MIN_SEARCHED]
        if found_in(searched, wanted, encodings_of(ds)) is not None:
            problems.append("an original identifying value (patient ID, name or accession) is in the file")
        if uids & originals.uids:
            problems.append("an original UID is still in the file (UIDs not remapped)")
        expected = originals.dates.get(sop)
        if expected is None:
            problems.append("not in the mapping: de-identified by another tool or another ledger?")
            return problems
        return problems + _dates(ds, *expected)


def _of_record(record: Mapping[str, Any]) -> _Originals:
    """What one de-identification record says the file must not hold, and its expected date."""
    values = {str(record.get(name) or "") for name in ("patient_id", "patient_name", "accession")}
    uids = {str(record.get(name) or "") for name in ("study_uid", "series_uid", "sop_uid")}
    dates = {
        str(record.get("new_sop_uid")): (
            str(record.get("study_date") or ""),
            int(record.get("date_shift") or 0),
        )
    }
    return _Originals({value for value in values if value}, {uid for uid in uids if uid}, dates)


def _read_originals(ledger: Ledger, pseudonym: str) -> _Originals:
    """Every original value the mapping holds for the patient behind PSEUDONYM, and their instances' dates."""
    found = _Originals()
    with ledger.engine.connect() as conn:
        for row in conn.execute(select(pseudonyms).where(pseudonyms.c.pseudonym == pseudonym)):
            found.values.update(value for value in (row.patient_id, row.patient_name) if value)
        for row in conn.execute(select(mapping).where(mapping.c.pseudonym == pseudonym)):
            found.values.update(value for value in (row.patient_id, row.patient_name, row.accession) if value)
            found.uids.update(value for value in (row.study_uid, row.series_uid, row.sop_uid) if value)
            found.dates[row.new_sop_uid] = (row.study_date or "", row.date_shift or 0)
    return found


def _searched_bytes(data: bytes, pixels_at: int) -> bytes:
    """The bytes an identifying value could be written in: all but the pixel data (burned-in text is
    refused, not searched), and anything after it."""
    if pixels_at >= len(data):
        return data
    after = _after_pixels(data, pixels_at)
    return data[:pixels_at] + after


def _after_pixels(data: bytes, at: int) -> bytes:
    """What follows the pixel data element starting at AT (explicit or implicit VR little endian); the
    rest of the file when its end cannot be told (then it is all searched)."""
    if data[at : at + 4] != b"\xe0\x7f\x10\x00":
        return data[at:]
    explicit = data[at + 4 : at + 6] in (b"OB", b"OW")
    length = int.from_bytes(data[at + 8 : at + 12] if explicit else data[at + 4 : at + 8], "little")
    if length == 0xFFFFFFFF:  # encapsulated: its end is the sequence delimiter, usually the file's end
        return b"" if data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") else data[at:]
    return data[at + (12 if explicit else 8) + length :]


def _dates(ds: Any, original: str, shift: int) -> list[str]:
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


class _Scan:
    """One pass over a dataset at every depth, decoding only what the checks read: UIDs (to find
    originals left), private elements (counted), and references to stored instances (ReferencedSOP
    InstanceUIDs whose ReferencedSOPClassUID is a storage class; a patient or study reference is not)."""

    def __init__(self) -> None:
        self.uids: set[str] = set()
        self.private: list[tuple[Any, int, int]] = []
        self.creators: list[tuple[Any, int, int]] = []
        self.references: list[str] = []

    def walk(self, ds: Any) -> None:
        for tag in ds.keys():  # noqa: SIM118 - the elements as read: iterating a Dataset decodes them all
            raw = ds.get_item(tag)
            group, element = tag.group, tag.element
            if group % 2 == 1 and element >= 0x1000:
                self.private.append((ds, group, element))
            elif group % 2 == 1 and 0x0010 <= element <= 0x00FF:
                self.creators.append((ds, group, element))
            vr = raw.VR or _vr(int(tag))
            if vr == "UI":
                self.uids.update(_uids(ds, tag, raw))
            elif vr == "SQ":
                for item in ds[tag].value or []:
                    self.walk(item)
        if 0x00081155 in ds:
            self._reference(ds)

    def _reference(self, ds: Any) -> None:
        from pydicom.uid import UID

        sop_class = str(ds.get("ReferencedSOPClassUID", "") or "")
        if not sop_class or UID(sop_class).name.endswith("Storage") or not UID(sop_class).is_valid:
            value = ds.ReferencedSOPInstanceUID
            many = isinstance(value, list | tuple) or value.__class__.__name__ == "MultiValue"
            self.references += [str(one) for one in value] if many else [str(value)]


def _has_value(ds: Any, keyword: str) -> bool:
    """Whether DS has KEYWORD with a value that is not blank, read from its bytes where it is still as
    read (converting it costs more than the check)."""
    from pydicom.datadict import tag_for_keyword

    raw = ds.get_item(tag_for_keyword(keyword))
    if raw is None:
        return False
    if getattr(raw, "is_raw", False) and isinstance(raw.value, bytes):
        return bool(raw.value.strip(b" \0"))
    return bool(str(ds[keyword].value or "").strip())


def _uids(ds: Any, tag: Any, raw: Any) -> list[str]:
    """The UIDs of a UI element: from its bytes as read (ASCII, backslash-separated, padded with a NUL
    or a space), without pydicom's conversion of every value (the hot path: each file has dozens)."""
    if getattr(raw, "is_raw", False) and isinstance(raw.value, bytes):
        return [one for one in raw.value.decode("ascii", "replace").rstrip("\0 ").split("\\") if one]
    value = ds[tag].value
    values = [value] if isinstance(value, str) else list(value or [])
    return [str(one) for one in values]


def _orphan_creators(scan: _Scan) -> list[str]:
    """Private creators (gggg,0010-00FF) whose block keeps no element: a vendor's name left behind."""
    used = {(id(parent), group, element >> 8) for parent, group, element in scan.private}
    left = [one for one in scan.creators if (id(one[0]), one[1], one[2]) not in used]
    return [f"{len(left)} private creators left without their block"] if left else []


def _vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _creator(ds: Any, group: int, element: int) -> str | None:
    """The private creator of (GROUP, ELEMENT), looked up at the top level (where our files keep them)."""
    elem = ds.get((group, element >> 8))
    return str(elem.value) if elem is not None else None
