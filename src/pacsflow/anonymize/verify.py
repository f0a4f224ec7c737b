"""The verifier: reads de-identified files as a stranger would and fails loudly on anything identifying
left in them, on dates or UIDs not changed, on references that lead nowhere, and on over-removal."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from pacsflow.anonymize.dates import shift_date
from pacsflow.anonymize.deidentify import name_parts
from pacsflow.anonymize.profile import OPTIONS
from pacsflow.anonymize.rawscan import Malformed, RawSet, dictionary_vr, scan
from pacsflow.anonymize.search import encodings_for, found_in
from pacsflow.ledger import Ledger
from pacsflow.ledger.schema import mapping, pseudonyms

_MIN_SEARCHED = 4
# the attributes the checks read, by tag (the files are read as bytes, not as pydicom datasets)
_SOP_CLASS, _SOP_INSTANCE, _MODALITY = 0x00080016, 0x00080018, 0x00080060
_CHARSET, _STUDY_DATE, _PATIENT_ID, _CODE_VALUE = 0x00080005, 0x00080020, 0x00100020, 0x00080100
_IDENTITY_REMOVED, _METHOD_CODES, _TEMPORAL = 0x00120062, 0x00120064, 0x00280303
_REFERENCED_CLASS, _REFERENCED_INSTANCE = 0x00081150, 0x00081155
#: what an image must still have after de-identification (the profile keeps all of it)
_ALWAYS = {
    "SOPClassUID": _SOP_CLASS,
    "SOPInstanceUID": _SOP_INSTANCE,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "Modality": _MODALITY,
}
_IMAGE = {
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "BitsAllocated": 0x00280100,
    "SamplesPerPixel": 0x00280002,
    "PhotometricInterpretation": 0x00280004,
}
#: single-frame cross-sectional images: their geometry must survive
_GEOMETRY_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.128": "PET",
}
_GEOMETRY = {
    "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037,
    "PixelSpacing": 0x00280030,
}
_CODE_OPTIONS = {code: name for name, (code, _) in OPTIONS.items()}
#: the character sets switched by escape sequences (ISO 2022 IR 87, 159, 149, 58 and the rest)
_STATEFUL = "ISO 2022"
#: the VRs whose values the character set applies to, and where ISO 2022 goes back to its first set
_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
_DELIMITERS = {0x09, 0x0A, 0x0C, 0x0D, 0x5C, 0x5E, 0x3D}
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
        try:
            read = scan(data)
        except Malformed:
            return None
        top = read.dataset
        if _SOP_INSTANCE not in top.values:
            return None
        problems: list[str] = []
        if top.text(_IDENTITY_REMOVED).upper() != "YES":
            problems.append("PatientIdentityRemoved is not YES")
        # ISO 2022 switches character sets with escapes wherever its writer chose: a name is found for
        # sure only in the decoded text, so the text of such a file is kept for decoding
        found = _Scan(texts=_STATEFUL in top.text(_CHARSET))
        found.walk(read.meta)
        found.walk(top)
        options = self._options(top)
        problems += self._private(found.private, options)
        problems += _orphan_creators(found)
        problems += self._kept(top, read.has_pixels)
        sop = top.text(_SOP_INSTANCE)
        originals = _of_record(record) if record is not None else self._of_mapping(top)
        if originals is not None:
            # the Retain UIDs option keeps them on purpose (the file says it was applied)
            uids = set() if "retain_uids" in options else found.uids
            problems += self._against(top, read.searched, sop, originals, uids, found.texts)
        return Checked(problems, sop, found.references)

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

    def _of_mapping(self, top: RawSet) -> _Originals | None:
        """What the mapping holds for the file's pseudonym (read once per patient)."""
        if self.ledger is None:
            return None
        pseudonym = top.text(_PATIENT_ID)
        found = self._by_pseudonym.get(pseudonym)
        if found is None:
            found = self._by_pseudonym[pseudonym] = _read_originals(self.ledger, pseudonym)
        return found

    @staticmethod
    def _options(top: RawSet) -> set[str]:
        """The options the file says were applied (DeidentificationMethodCodeSequence)."""
        codes = {item.text(_CODE_VALUE) for item in top.sequences.get(_METHOD_CODES, [])}
        return {_CODE_OPTIONS[code] for code in codes if code in _CODE_OPTIONS}

    @staticmethod
    def _private(private: list[tuple[RawSet, int, int]], options: set[str]) -> list[str]:
        """Private elements left, but those the Retain Safe Private option keeps (if the file says so)."""
        from pacsflow.anonymize.profile import load_profile

        profile = load_profile(("retain_safe_private",)) if "retain_safe_private" in options else None
        left = 0
        for parent, group, element in private:
            if profile is not None:
                creator = parent.text(group << 16 | element >> 8)
                if creator and profile.is_safe_private(creator, group, element):
                    continue
            left += 1
        return [f"{left} private attributes left"] if left else []

    @staticmethod
    def _kept(top: RawSet, has_pixels: bool) -> list[str]:
        """Over-removal: what the profile keeps must still be there."""
        from pydicom.uid import UID

        problems = [f"{name} removed" for name, tag in _ALWAYS.items() if not top.text(tag)]
        sop_class = top.text(_SOP_CLASS)
        is_image = UID(sop_class).name.endswith("Image Storage") if sop_class else False
        if is_image or has_pixels:
            if not has_pixels:
                problems.append("pixel data removed")
            problems += [f"{name} removed" for name, tag in _IMAGE.items() if tag not in top]
        if sop_class in _GEOMETRY_CLASSES:
            missing = [name for name, tag in _GEOMETRY.items() if tag not in top]
            problems += [f"{name} removed (image geometry)" for name in missing]
        return problems

    @staticmethod
    def _against(
        top: RawSet, searched: bytes, sop: str, originals: _Originals, uids: set[str], texts: list[bytes]
    ) -> list[str]:
        problems: list[str] = []
        parts = [part for value in originals.values for part in name_parts(value)]
        wanted = [part for part in parts if len(part.encode()) >= _MIN_SEARCHED]
        terms = top.text(_CHARSET).split("\\")  # "\\ISO 2022 IR 87": the first term may be blank
        declared: str | list[str] = terms[0] if len(terms) == 1 else terms
        if found_in(searched, wanted, encodings_for(declared)) is not None or _in_decoded(
            texts, declared, wanted
        ):
            problems.append("an original identifying value (patient ID, name or accession) is in the file")
        if uids & originals.uids:
            problems.append("an original UID is still in the file (UIDs not remapped)")
        expected = originals.dates.get(sop)
        if expected is None:
            problems.append("not in the mapping: de-identified by another tool or another ledger?")
            return problems
        return problems + _dates(top, *expected)


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


def _dates(top: RawSet, original: str, shift: int) -> list[str]:
    if not original:
        return []
    written = top.text(_STUDY_DATE)
    how = top.text(_TEMPORAL).upper()
    if how == "MODIFIED" and written != shift_date(original, shift):
        return ["StudyDate not shifted as the mapping says"]
    if how == "REMOVED" and written:
        return ["StudyDate kept although dates were to be removed"]
    if how not in ("MODIFIED", "UNMODIFIED", "REMOVED"):
        return ["LongitudinalTemporalInformationModified missing: were the dates handled?"]
    return []


def _in_decoded(texts: list[bytes], declared: str | list[str], parts: list[str]) -> bool:
    """Whether any of PARTS is in TEXTS decoded in the DECLARED character sets, whatever its case."""
    if not texts:
        return False
    from pydicom.charset import convert_encodings, decode_bytes

    try:
        encodings = convert_encodings(declared)
        decoded = "\n".join(decode_bytes(text, encodings, _DELIMITERS) for text in texts).casefold()
    except (LookupError, ValueError, TypeError):
        return True  # text that cannot be decoded cannot be vouched for
    return any(part.casefold() in decoded for part in parts)


class _Scan:
    """One pass over a dataset at every depth: UIDs (to find originals left), private elements and
    creators (counted), and references to stored instances (ReferencedSOPInstanceUIDs whose
    ReferencedSOPClassUID is a storage class; a patient or study reference is not)."""

    def __init__(self, *, texts: bool = False) -> None:
        self.keep_texts = texts
        #: the values of every text element (with TEXTS): decoded where escapes make bytes unreliable
        self.texts: list[bytes] = []
        self.uids: set[str] = set()
        self.private: list[tuple[RawSet, int, int]] = []
        self.creators: list[tuple[RawSet, int, int]] = []
        self.references: list[str] = []

    def walk(self, dataset: RawSet) -> None:
        for tag, (vr, value) in dataset.values.items():
            if tag >> 16 & 1:
                self._private(dataset, tag)
            # an element written as UN (implicit VR, or a tool that did not know it) is what it is
            known = vr if vr != "UN" else dictionary_vr(tag)
            if self.keep_texts and known in _TEXT_VRS:
                self.texts.append(value)
            if known == "UI":
                self.uids.update(dataset.texts(tag))
        for tag, items in dataset.sequences.items():
            if tag >> 16 & 1:
                self._private(dataset, tag)
            for item in items:
                self.walk(item)
        if _REFERENCED_INSTANCE in dataset.values:
            self._reference(dataset)

    def _private(self, dataset: RawSet, tag: int) -> None:
        group, element = tag >> 16, tag & 0xFFFF
        if element >= 0x1000:
            self.private.append((dataset, group, element))
        elif 0x0010 <= element <= 0x00FF:
            self.creators.append((dataset, group, element))

    def _reference(self, dataset: RawSet) -> None:
        from pydicom.uid import UID

        sop_class = dataset.text(_REFERENCED_CLASS)
        if not sop_class or UID(sop_class).name.endswith("Storage") or not UID(sop_class).is_valid:
            self.references += dataset.texts(_REFERENCED_INSTANCE)


def _orphan_creators(scan: _Scan) -> list[str]:
    """Private creators (gggg,0010-00FF) whose block keeps no element: a vendor's name left behind."""
    used = {(id(parent), group, element >> 8) for parent, group, element in scan.private}
    left = [one for one in scan.creators if (id(one[0]), one[1], one[2]) not in used]
    return [f"{len(left)} private creators left without their block"] if left else []
