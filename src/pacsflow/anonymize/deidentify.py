"""De-identifying one DICOM instance: the profile's action on every element at any depth, keyed pseudonyms,
shifted dates, remapped UIDs, and a check of the result before it is handed back."""

from __future__ import annotations

import functools
import io
import re
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom import config as pydicom_config
from pydicom.errors import BytesLengthException, InvalidDicomError

from pacsflow.anonymize.dates import shift_values
from pacsflow.anonymize.keys import Keys
from pacsflow.anonymize.profile import Profile, load_profile
from pacsflow.anonymize.rawscan import encapsulated_end
from pacsflow.anonymize.search import encodings_of, found_in
from pacsflow.anonymize.writer import write_header
from pacsflow.errors import BadInput
from pacsflow.join import LABEL, JoinTable
from pacsflow.orthanc import orthanc_id

# pydicom checks every value it reads or is given against its VR, only to warn (quoting the value: a
# patient's date, a name): the verifier checks what matters here, and the checks cost a tenth of the
# time a file takes. For the whole process, once a de-identifier is loaded.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE

#: what DeidentificationMethod starts with: with a pseudonym of this mapping, a re-run knows its own output
#: by it (walked again, its pseudonym, UIDs and dates kept)
METHOD = "pacsflow"
_CODING_SCHEME = "DCM"
# Table E.1-1's actions as written for a single element and for a sequence. Removal (X) of a single
# element is written as an empty value: no value survives either way, and a Type 2 element of a macro
# (RequestedProcedureID in an SR's request) keeps its IOD valid. A sequence is removed, never left empty
# (an empty Type 3 sequence is invalid). Compound codes take what keeps the IOD valid.
_ELEMENT = {"X": "Z", "Z/D": "Z", "X/Z": "Z", "X/D": "D", "X/Z/D": "Z", "X/Z/U*": "U"}
_SEQUENCE = {"Z": "X", "Z/D": "D", "X/Z": "X", "X/D": "D", "X/Z/D": "X", "X/Z/U*": "U"}
_OVERLAY_DATA = 0x3000
_SR_CLASSES = "1.2.840.10008.5.1.4.1.1.88."
_STUDIES = 0x00081110  # ReferencedStudySequence
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
)
_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_DESCRIBING_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC"})
_IDENTIFYING_VRS = _DESCRIBING_VRS | {"PN", "DA", "DT", "UI", "AE", "UR"}
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y", "IS": "0", "DS": "0"}
_DUMMY_TEXT = "ANONYMIZED"
_MAX_LENGTH = {"SH": 16, "CS": 16, "AE": 16, "LO": 64, "PN": 64}
#: SOP classes whose pixels are likely to carry burned-in text (screens, ultrasound, video, photographs)
_BURNED_IN_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture and its multi-frame kinds (.7.1 - .7.4)
    "1.2.840.10008.5.1.4.1.1.6.",  # Ultrasound Image / Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.77.1.",  # Visible Light (endoscopy, photography, video)
)
_BURNED_IN_MODALITIES = frozenset({"US", "SC", "XC", "ES", "GM", "SM", "OT", "DOC"})
#: tags that are never pseudonymised even though their VR is UI: classes and syntaxes are not identities
_KEYWORD_KEEPS_UID = re.compile(r"(ClassUID|TransferSyntaxUID|SchemeUID|ClassesInStudy|Protocol.*UID)$")
#: file meta that names the sender or carries application data (PHI has been seen in both)
_META_REMOVED = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "SourcePresentationAddress",
    "SendingPresentationAddress",
    "ReceivingPresentationAddress",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)
PATIENT_ID, PATIENT_NAME, ACCESSION = 0x00100020, 0x00100010, 0x00080050
_PIXELS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_MIN_LEAK = 4  # shorter values ("M", "YES", "1") stand in any file; longer ones are checked for leaks


@dataclass(frozen=True)
class Patient:
    """What the mapping gives a patient: their pseudonym and how far their dates move."""

    pseudonym: str
    date_shift: int


class Pseudonyms(Protocol):
    """Where a patient's pseudonym comes from (the mapping, a CSV, the keyed format)."""

    def patient(self, patient_id: str, patient_name: str) -> Patient: ...

    def is_pseudonym(self, value: str) -> bool:
        """Whether VALUE is a pseudonym given out here (a file naming it is our own output)."""
        ...


@dataclass
class Record:
    """One instance de-identified: its original and new identities, for the mapping and the summary."""

    patient_id: str
    patient_name: str
    pseudonym: str
    accession: str
    new_accession: str
    study_uid: str
    new_study_uid: str
    series_uid: str
    new_series_uid: str
    sop_uid: str
    new_sop_uid: str
    study_date: str
    date_shift: int
    #: True when the input was our own output: walked again with its identities kept, no mapping row
    already: bool = False

    @property
    def orthanc_before(self) -> str:
        return orthanc_id(self.patient_id, self.study_uid, self.series_uid, self.sop_uid)

    @property
    def orthanc_after(self) -> str:
        return orthanc_id(self.pseudonym, self.new_study_uid, self.new_series_uid, self.new_sop_uid)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class Deidentified:
    """The new file's bytes and what became of the instance."""

    data: bytes
    record: Record
    #: the instances it refers to (set once the verifier has read it)
    references: list[str] = field(default_factory=list)

    def anon(self) -> dict[str, Any]:
        """What an item's result keeps of it: the record, and the references when there are any."""
        found = self.record.as_dict()
        if self.references:
            found["references"] = self.references
        return found


@dataclass
class _Context:
    """State of one instance's walk: the patient, and the values removed and kept (for the leak check)."""

    patient: Patient
    shift: int
    removed: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)
    #: the patient's own identifiers, cut out of descriptions the profile cleans (action C)
    identifiers: list[str] = field(default_factory=list)
    #: the same as the file's character sets write them: kept text is decoded only if it holds one
    needles: list[bytes] = field(default_factory=list)
    #: text elements the profile cleans, cleaned again of every value removed anywhere once all are known
    cleaned: list[Any] = field(default_factory=list)
    #: a Structured Report (its document modules make some sequences Type 2), and how deep the walk is
    sr: bool = False
    depth: int = 0
    #: our own output walked again: its pseudonym, UIDs, accession number and dates stay as they are
    ours: bool = False
    #: the values of the elements kept as read, never decoded on the hot path: read only when a removed
    #: value is found in the result (is it there because an element the profile keeps holds it too?)
    kept_as_read: Any = None

    def note_removed(self, vr: str, values: list[str]) -> None:
        """Remember an identifying value taken out (names, IDs, text, dates, instance UIDs), for the check
        of the result; codes, numbers and standard UIDs identify nobody and stand in many places."""
        if vr not in _IDENTIFYING_VRS:
            return
        for value in values:
            if vr == "UI" and _is_standard_uid(value):
                continue
            parts = name_parts(value) if vr == "PN" else [value.strip()]
            self.removed.update(part for part in parts if _long_enough(part))

    def without_kept(self, values: set[str]) -> set[str]:
        """VALUES but those the result keeps on purpose: the walk's decisions, then the elements kept as
        read (decoded only if something is left to take out)."""
        left = values - self.kept
        if left and self.kept_as_read is not None:
            left -= self.kept_as_read()
        return left


def burned_in_reason(ds: Any) -> str | None:
    """Why an instance may show identifying text in its pixels, or None."""
    if _text(ds.get("BurnedInAnnotation")).strip().upper() == "YES":
        return "BurnedInAnnotation is YES"
    sop_class = _text(ds.get("SOPClassUID"))
    if any(sop_class == prefix.rstrip(".") or sop_class.startswith(prefix) for prefix in _BURNED_IN_CLASSES):
        return f"its SOP class ({_class_name(sop_class)}) often shows text in the image"
    modality = _text(ds.get("Modality")).strip().upper()
    if modality in _BURNED_IN_MODALITIES:
        return f"modality {modality} often shows text in the image"
    return None


def _class_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name or uid


def _text(value: Any) -> str:
    """A value as one text: several values joined with backslashes, as the file holds them ('' for none).
    Both ways of de-identifying (pydicom's dataset, the bytes) see a multi-valued PatientName or
    AccessionNumber as the same text, so it gets the same pseudonym either way."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(one) for one in value)
    return str(value)


def _values(value: Any) -> list[str]:
    """The text values of an element (one or several), as strings."""
    if value is None:
        return []
    if isinstance(value, bytes | bytearray):
        return []
    if isinstance(value, str):
        return [value]
    if hasattr(value, "components"):  # PersonName: the whole name and each group
        text = str(value)
        return [text, *value.components]
    if isinstance(value, Iterable):
        out: list[str] = []
        for item in value:
            out.extend(_values(item))
        return out
    return [str(value)]


def name_parts(text: str) -> list[str]:
    """A person name's groups, components and their run-together forms (山田太郎, Tarou Yamada): any of
    them may appear alone in a description."""
    parts = [text]
    for group in text.split("="):
        components = [part.strip() for part in group.split("^") if part.strip()]
        parts += [group, *components]
        if len(components) > 1:
            parts += ["".join(components), " ".join(components), " ".join(reversed(components[:2]))]
    return [part.strip() for part in parts if part.strip()]


def _long_enough(value: str) -> bool:
    """Worth searching for: 4 bytes or more in UTF-8 (two CJK characters are; 'M' or '12' is not)."""
    return len(value.encode("utf-8")) >= _MIN_LEAK


class Deidentifier:
    """Applies PROFILE to instances with KEYS, patients' pseudonyms from PSEUDONYMS.

    Thread-safe: workers share one. Instances that may show burned-in text are refused unless
    ALLOW_BURNED_IN. With JOIN, a patient without a row is refused, and the row's values are written in.
    """

    def __init__(
        self,
        profile: Profile,
        keys: Keys,
        pseudonyms: Pseudonyms,
        *,
        allow_burned_in: bool = False,
        join: JoinTable | None = None,
        version: str = "",
        bytewise: bool = True,
    ) -> None:
        self.profile = profile
        self.keys = keys
        self.pseudonyms = pseudonyms
        self.allow_burned_in = allow_burned_in
        #: a CSV keyed by the original PatientID: its PatientID column is the patient's pseudonym (see
        #: MappingPseudonyms), its other columns are written into the de-identified file
        self.join = join
        self.method = [f"{METHOD} {version}".strip(), f"PS3.15 {profile.edition} E.1-1 Basic Profile"]
        self.method += [name.replace("_", " ") for name in profile.options]
        self._uids: dict[str, str] = {}
        self._marks: dict[tuple[bool, bool], list[Any]] = {}  # by (implicit VR, little endian)
        #: attributes kept only because an option says so: their values are not leaks where they recur
        basic = load_profile(())
        self._kept_by_option = {
            tag for tag, action in profile.exact.items() if action == "K" and basic.exact.get(tag) != "K"
        }
        self._lock = threading.Lock()
        #: explicit VR little endian files de-identified from their bytes (anonymize.bytewise), the same
        #: decisions at a third of the cost; False: every file through pydicom (the tests' reference)
        self.bytewise = bytewise
        self._bytewise_marks: dict[int, bytes] | None = None

    # -- bytes in, bytes out --------------------------------------------------------------------

    def apply(self, data: bytes, where: str) -> Deidentified:
        """DATA (a DICOM file) de-identified. Raises BadInput: not readable as DICOM, burned-in text
        possible (unless allowed), or an identifying value found in the result (never written)."""
        if self.bytewise and self.join is None:
            from pacsflow.anonymize import bytewise

            done = bytewise.apply(self, data, where)
            if done is not None:
                return done
        from pydicom import dcmread

        stream = io.BytesIO(data)
        try:
            ds = dcmread(stream, stop_before_pixels=True, force=True)
        except _UNREADABLE as exc:
            raise _unreadable(exc, where) from None
        pixels_at = stream.tell()
        try:
            tail = self._pixel_tail(ds, data, pixels_at)
        except BadInput as exc:
            raise BadInput(exc.reason, where=where) from None
        if tail is None:  # something after the pixels, or an encoding we cannot splice: the whole file
            try:
                ds = dcmread(io.BytesIO(data), force=True)
            except _UNREADABLE as exc:
                raise _unreadable(exc, where) from None
            _check_end(ds, len(data), where)
        if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
            raise BadInput("not a DICOM instance (no SOPInstanceUID or StudyInstanceUID)", where=where)
        _check_whole(ds, where)
        try:
            record, context = self.dataset(ds, where)
        except _UNREADABLE as exc:  # a sequence is decoded only now: a damaged one fails here
            raise _unreadable(exc, where) from None
        try:
            header = write_header(ds, data) if tail is not None else None
            if header is None:
                out = io.BytesIO()
                ds.save_as(out, enforce_file_format=True)
                header = out.getvalue()
        except (ValueError, TypeError, KeyError, OverflowError, NotImplementedError) as exc:
            raise BadInput(f"cannot be written after de-identification ({exc})", where=where) from None
        self._check_leaks(header, encodings_of(ds), context, where)
        return Deidentified(header + tail if tail is not None else header, record)

    @staticmethod
    def _pixel_tail(ds: Any, data: bytes, at: int) -> bytes | memoryview | None:
        """The pixel data element as the file holds it (a view: half a megabyte not copied but once, into
        the result), if it ends the file and the header can be written apart from it (little endian, not
        deflated); None otherwise."""
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        if syntax in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
            # big endian, deflated (read from an inflated copy: AT is no position in DATA)
            return None
        if at >= len(data):
            return b""  # no pixel data at all: the header is the whole file
        if int.from_bytes(data[at : at + 2], "little") != 0x7FE0 or data[at + 2 : at + 4] != b"\x10\x00":
            return None
        implicit = syntax == "1.2.840.10008.1.2" or (not syntax and ds.original_encoding[0])
        start = at + (8 if implicit else 12)
        if start > len(data):
            raise BadInput("truncated: the file ends inside the pixel data's header")
        length = int.from_bytes(data[start - 4 : start], "little")
        if length == 0xFFFFFFFF:  # encapsulated: its items lead to its delimiter, and that ends the file
            view = memoryview(data)
            return view[at:] if encapsulated_end(view, start) == len(data) else None
        if start + length > len(data):
            raise BadInput(f"truncated: the pixel data lacks {start + length - len(data)} bytes")
        return memoryview(data)[at:] if start + length == len(data) else None

    # -- one dataset ----------------------------------------------------------------------------

    def dataset(self, ds: Any, where: str = "file") -> tuple[Record, _Context]:
        """De-identify DS in place; returns what became of it. Raises BadInput for burned-in text, a file
        without a PatientID, a patient the CSV lacks."""
        original, patient, shift, context = self.begin(ds, where)
        ours = context.ours
        patient_id = original["PatientID"]
        context.kept_as_read = lambda: _values_as_read(ds)
        self._walk(ds, context)
        self._clean_texts(context)
        self._meta(ds)
        self._mark(ds)
        if self.join is not None and not ours:
            self._join(ds, patient_id)
        return self._record(original, ds, patient, shift=shift, already=ours), context

    def begin(self, ds: Any, where: str) -> tuple[dict[str, str], Patient, int, _Context]:
        """What an instance's walk starts from (DS: its top-level values, get() by keyword): its original
        identities, its patient's pseudonym and date shift, and the walk's context. Raises BadInput for
        burned-in text, a file without a PatientID, a patient the CSV lacks."""
        patient_id = _text(ds.get("PatientID")).strip()
        patient_name = _text(ds.get("PatientName"))
        if not self.allow_burned_in:
            reason = burned_in_reason(ds)
            if reason is not None:
                raise BadInput(
                    f"refused: may show burned-in text ({reason}); not de-identified "
                    "(--allow-burned-in takes it after you have checked its pixels)",
                    where=where,
                )
        original = {
            "StudyInstanceUID": _text(ds.get("StudyInstanceUID")),
            "SeriesInstanceUID": _text(ds.get("SeriesInstanceUID")),
            "SOPInstanceUID": _text(ds.get("SOPInstanceUID")),
            "AccessionNumber": _text(ds.get("AccessionNumber")),
            "StudyDate": _text(ds.get("StudyDate")),
            "PatientID": patient_id,
            "PatientName": patient_name,
        }
        # Our own output is walked again too (what was added to it since is cleaned), keeping its
        # pseudonym, UIDs and dates: genuine output comes out byte for byte as it went in.
        ours = self._already_ours(ds)
        if ours:
            patient, shift = Patient(patient_id, 0), 0
        else:
            if not patient_id:
                raise BadInput(
                    "no PatientID: it cannot get a pseudonym (and dates) of its own; not de-identified",
                    where=where,
                )
            if self.join is not None and patient_id not in self.join.values:
                # a pseudonymisation table that lacks a patient must not let them through under another name
                raise BadInput(
                    f"no row for its patient in {self.join.path.name} (column {self.join.key_column}); "
                    "not de-identified",
                    where=where,
                )
            patient = self.pseudonyms.patient(patient_id, patient_name)
            # a file another de-identifier already moved in time keeps its dates: shifting twice loses
            # them; the flag counts only on a file that also says its identity was removed
            moved = _text(ds.get("LongitudinalTemporalInformationModified")).upper() == "MODIFIED"
            removed = _text(ds.get("PatientIdentityRemoved")).upper() == "YES"
            shift = 0 if moved and removed else patient.date_shift
        context = _Context(patient, shift, sr=_text(ds.get("SOPClassUID")).startswith(_SR_CLASSES), ours=ours)
        if not ours:
            context.identifiers = sorted(
                {part for part in name_parts(patient_name) if len(part) >= 2}
                | {value for value in (patient_id, original["AccessionNumber"]) if _long_enough(value)},
                key=len,
                reverse=True,
            )
        # raw kept text is decoded when it holds an identifier long enough not to match by chance
        context.needles = _encoded(
            [one for one in context.identifiers if _long_enough(one)], encodings_of(ds)
        )
        return original, patient, shift, context

    def _join(self, ds: Any, patient_id: str) -> None:
        assert self.join is not None
        for keyword, value in self.join.values[patient_id].items():
            if keyword not in (LABEL, "PatientID"):  # the pseudonym came through the mapping already
                setattr(ds, keyword, value)

    def _already_ours(self, ds: Any) -> bool:
        """Our own output of this project: it says pacsflow de-identified it, and its PatientID is a
        pseudonym this mapping gave out. Anything else is de-identified (again): the marks alone could
        be copied onto a file that still names its patient."""
        if _text(ds.get("PatientIdentityRemoved")).upper() != "YES":
            return False
        method = ds.get("DeidentificationMethod", "")
        values = [method] if isinstance(method, str) else list(method or [])
        if not any(str(value).startswith(METHOD) for value in values):
            return False
        return self.pseudonyms.is_pseudonym(_text(ds.get("PatientID")).strip())

    def _record(
        self, original: Any, ds: Any, patient: Patient, *, already: bool = False, shift: int | None = None
    ) -> Record:
        def get(source: Any, name: str) -> str:
            return _text(source.get(name)).strip()

        return Record(
            patient_id=get(original, "PatientID"),
            patient_name=str(original.get("PatientName", "") or ""),
            pseudonym=get(ds, "PatientID") if not already else patient.pseudonym,
            accession=get(original, "AccessionNumber"),
            new_accession=get(ds, "AccessionNumber"),
            study_uid=get(original, "StudyInstanceUID"),
            new_study_uid=get(ds, "StudyInstanceUID"),
            series_uid=get(original, "SeriesInstanceUID"),
            new_series_uid=get(ds, "SeriesInstanceUID"),
            sop_uid=get(original, "SOPInstanceUID"),
            new_sop_uid=get(ds, "SOPInstanceUID"),
            study_date=get(original, "StudyDate"),
            date_shift=patient.date_shift if shift is None else shift,
            already=already,
        )

    def new_uid(self, original: str) -> str:
        """What an instance, series or study UID becomes under this profile (kept with Retain UIDs)."""
        return original if self.profile.action(0x00080018) == "K" else self.uid(original)

    def uid(self, original: str) -> str:
        """ORIGINAL's replacement (cached: a series' UIDs recur in every one of its instances)."""
        found = self._uids.get(original)
        if found is None:
            found = self.keys.uid(original)
            with self._lock:
                if len(self._uids) > 100_000:
                    self._uids.clear()
                self._uids[original] = found
        return found

    # -- the walk -------------------------------------------------------------------------------

    def _walk(self, ds: Any, context: _Context) -> None:
        private_kept: set[tuple[int, int]] = set()  # (group, block) of private elements kept
        creators: list[Any] = []
        for tag in list(ds.keys()):
            raw = ds.get_item(tag)  # as read: converted below only when its value matters (the hot path)
            tag_int = int(tag)
            group, element = tag_int >> 16, tag_int & 0xFFFF
            if element == 0 and group != 0x0002:  # group lengths: retired, and wrong after any change
                del ds[tag]
                continue
            if group % 2 == 1:
                if 0x0010 <= element <= 0x00FF:
                    creators.append(tag)
                    continue
                elem = ds[tag]
                if element >= 0x1000 and self._keep_private(ds, group, element):
                    private_kept.add((group, element >> 8))
                    if elem.VR == "SQ":
                        for item in elem.value:
                            self._walk(item, context)
                    else:
                        context.kept.update(_values(elem.value))
                    continue
                self._note_removed(elem, context)
                del ds[tag]
                continue
            # a known attribute written as UN (implicit VR, or a tool that did not know it) is what it is
            vr = raw.VR if raw.VR and raw.VR != "UN" else _dictionary_vr(tag_int)
            action = self._action(tag_int, vr, context)
            if (
                vr != "SQ"
                and getattr(raw, "is_raw", False)
                and self._untouched(raw.value or b"", tag_int, vr, action, context)
            ):
                continue
            self._apply(ds, ds[tag], action, context)
        for creator in creators:
            if (int(creator) >> 16, int(creator) & 0xFF) not in private_kept:
                del ds[creator]
            else:
                context.kept.update(_values(ds[creator].value))
        emptied = {
            group
            for group in range(0x6000, 0x6020, 2)
            if (group, 0x0010) in ds and (group, _OVERLAY_DATA) not in ds
        }
        # keys(), not the dataset itself: iterating a Dataset decodes every element it holds
        for tag in [tag for tag in ds.keys() if (int(tag) >> 16) in emptied] if emptied else []:  # noqa: SIM118
            self._note_removed(ds[tag], context)
            del ds[tag]

    def _untouched(self, raw: bytes, tag: int, vr: str, action: str, context: _Context) -> bool:
        """Whether an element as read can stay as it is without even being decoded: kept by the profile,
        and its bytes hold none of the patient's identifiers; or a UID that is a class or standard UID."""
        if action == "K":
            if tag == 0x00101010 or tag in self._kept_by_option or vr in ("DA", "DT", "UI"):
                return False  # PatientAge is capped; what an option keeps is remembered as kept on purpose
            value = raw.lower()  # a name in capitals is the same name
            return vr not in _DESCRIBING_VRS or not any(needle in value for needle in context.needles)
        if action == "U?":
            if context.ours or _KEYWORD_KEEPS_UID.search(_keyword(tag)):
                return True
            values = raw.rstrip(b"\0 ").decode("ascii", "replace").split("\\")
            return all(_is_standard_uid(value) for value in values)
        return False

    def _keep_private(self, ds: Any, group: int, element: int) -> bool:
        creator = ds.get((group, element >> 8))
        return self.keeps_private(None if creator is None else str(creator.value), group, element)

    def keeps_private(self, creator: str | None, group: int, element: int) -> bool:
        """Whether a private element is kept: every one (the profile keeps them), or a known safe one of
        its block's CREATOR (None: the block has no creator)."""
        if self.profile.private == "K":
            return True
        return creator is not None and self.profile.is_safe_private(creator, group, element)

    def _action(self, tag: int, vr: str, context: _Context) -> str:
        """The action for an element: the table's, or for attributes it does not list, ours by VR."""
        if tag in (PATIENT_ID, PATIENT_NAME):
            return "P"  # the pseudonym
        if tag == ACCESSION:
            return "A"
        action = self._listed_action(tag, vr, context)
        if _vr_fits(tag, vr) or (action == "K" and "SQ" not in (vr, _dictionary_vr(tag))):
            return action
        # written with a VR the standard does not give it (a date as OB, a sequence as bytes): its value
        # cannot be shifted, cleaned or walked as the profile asks, so it goes
        return "X"

    def _listed_action(self, tag: int, vr: str, context: _Context) -> str:
        repeating = (tag >> 16) & 0xFF00 in (0x5000, 0x6000)
        action = self.profile.action(tag)
        if action is not None:
            if vr == "SQ":
                if context.sr and action in ("Z", "X/Z", "X/Z/D") and (context.depth, tag) != (0, _STUDIES):
                    # Type 2 in the SR Document modules (the performed procedure step, a request's
                    # studies, an observer's codes): present and empty, as they allow; only the General
                    # Study module's own ReferencedStudySequence is Type 3 there
                    return "Z"
                return _SEQUENCE.get(action, action)
            # curves and overlays are removed outright: an overlay without its data is no overlay
            return action if repeating and action == "X" else _ELEMENT.get(action, action)
        if tag >> 16 == 0x0010 or not _keyword(tag):
            # the patient module's attributes the table does not list (alternative-calendar dates...) and
            # attributes no dictionary here knows: nobody vouched for them, so they go
            return "X"
        if vr == "PN":
            return "Z"  # a person's name the table does not list is still a name
        if vr in ("DA", "DT"):
            return "C" if self.profile.shifts_dates else "K" if self.profile.keeps_dates else "Z"
        if repeating and vr in _TEXT_VRS:
            return "X"  # an overlay's or curve's label or description the table does not list
        if vr in _FREE_TEXT_VRS:
            # free text the table does not list (an SR's TextValue): cleaned of the patient's own
            # identifiers where the user asked for cleaned text, else replaced, keeping the structure
            cleaning = {"clean_structured_content", "clean_descriptors"} & set(self.profile.options)
            return "C" if cleaning else "D"
        if vr == "UI":
            return "U?"  # remapped unless it is a class, a syntax or a standard UID
        return "K"

    def _apply(self, ds: Any, elem: Any, action: str, context: _Context) -> None:
        vr = elem.VR
        if vr == "SQ":
            if action == "X":
                self._note_removed_sequence(elem, context)
                del ds[elem.tag]
            elif action == "Z":
                self._note_removed_sequence(elem, context)
                elem.value = []
            else:  # K, C, D, U (U* in the table): the items stay, each de-identified in turn
                context.depth += 1
                try:
                    for item in elem.value:
                        self._walk(item, context)
                finally:
                    context.depth -= 1
            return
        if action == "K":
            if int(elem.tag) == 0x00101010:  # PatientAge kept (patient characteristics): 90 and over as 90
                elem.value = _cap_age(str(elem.value or ""))
            elif vr in _DESCRIBING_VRS and context.identifiers and elem.value:
                # text the table keeps (a layer's description...) may still name the patient: cut it out
                cleaned = _cut(elem.value, context.identifiers)
                if cleaned != elem.value:
                    self._note_removed(elem, context)
                    elem.value = cleaned
            context.kept.update(_values(elem.value))
            return
        if action == "X":
            self._note_removed(elem, context)
            del ds[elem.tag]
            return
        old = elem.value
        if action == "P":
            new: Any = context.patient.pseudonym
        elif vr == "UI" and context.ours and action in ("U", "U?", "D"):
            new = old  # our own UIDs: remapped once
        elif action == "A":
            new = self.keys.accession(_text(old)) if _text(old).strip() and not context.ours else old
        elif action == "Z":
            new = "" if vr in _TEXT_VRS else None
        elif action == "D":
            new = self._dummy(vr, old)
        elif action in ("U", "U?"):
            new = self._uids_of(elem, old, only_instances=action == "U?")
        elif action == "C":
            new = self._clean(vr, old, context)
            if vr in _DESCRIBING_VRS:
                context.cleaned.append(elem)
        else:  # an action code this pacsflow does not know: remove rather than guess
            new = None
            action = "X"
        if action == "X":
            self._note_removed(elem, context)
            del ds[elem.tag]
            return
        if new != old:
            self._note_removed(elem, context)
            elem.value = new
            context.kept.update(_values(new))
        else:
            context.kept.update(_values(old))

    def _dummy(self, vr: str, old: Any) -> Any:
        if vr == "UI":
            return self._uid_values(old)
        if vr in _DUMMY:
            return _DUMMY[vr]
        if vr in _TEXT_VRS or vr in ("UC", "UR"):
            return _DUMMY_TEXT[: _MAX_LENGTH.get(vr, 64)]
        if vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
            return 0
        return None

    def _uids_of(self, elem: Any, old: Any, *, only_instances: bool) -> Any:
        if only_instances:
            keyword = elem.keyword or ""
            if _KEYWORD_KEEPS_UID.search(keyword) or all(_is_standard_uid(value) for value in _values(old)):
                return old
        return self._uid_values(old)

    def _uid_values(self, old: Any) -> Any:
        if old is None or old == "":
            return old
        if isinstance(old, str):
            return self.uid(old)
        return [self.uid(str(value)) for value in old]

    def _clean(self, vr: str, old: Any, context: _Context) -> Any:
        if vr in ("DA", "DT"):
            return shift_values(old, context.shift) if self.profile.shifts_dates and context.shift else old
        if vr == "TM" or vr not in _TEXT_VRS:
            return old  # a time of day moves with no date shift; numbers and codes have no identity
        if vr == "PN":
            return ""
        return _cut(old, context.identifiers)

    def _clean_texts(self, context: _Context) -> None:
        """Text the profile cleans (C) rid of every identifying value the walk took out anywhere in the
        instance (a phone number, a birth date in a comment), once all of them are known."""
        if not context.cleaned:
            return
        found = sorted(
            (value for value in context.without_kept(context.removed) if _long_enough(value)), key=len
        )
        identifiers = sorted(set(found) | set(context.identifiers), key=len, reverse=True)
        for elem in context.cleaned:
            cleaned = _cut(elem.value, identifiers)
            if cleaned != elem.value:
                elem.value = cleaned

    @staticmethod
    def _note_removed(elem: Any, context: _Context) -> None:
        if elem.VR in _IDENTIFYING_VRS:  # decoded only then
            context.note_removed(elem.VR, _values(elem.value))

    def _note_removed_sequence(self, elem: Any, context: _Context) -> None:
        for item in elem.value:
            for inner in item.iterall():
                if inner.VR != "SQ":
                    self._note_removed(inner, context)

    # -- after the walk -------------------------------------------------------------------------

    def _meta(self, ds: Any) -> None:
        """File meta: the SOP instance UID as in the dataset, no sending application's AE title."""
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            implicit = bool(getattr(ds, "original_encoding", (True, True))[0])
            meta = meta or FileMetaDataset()
            meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
            ds.file_meta = meta
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", meta.get("MediaStorageSOPClassUID", ""))
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword in _META_REMOVED:
            if keyword in meta:
                del meta[keyword]
        # the 128-byte preamble is free for applications to fill: some put the patient's name there
        ds.preamble = b"\0" * 128

    def _mark(self, ds: Any) -> None:
        """PatientIdentityRemoved, DeidentificationMethod and its codes, LongitudinalTemporalInformation
        Modified: what was applied, for readers and for our own re-runs. The same for every instance:
        encoded once per encoding and put in as read elements (written as they are)."""
        implicit, little = getattr(ds, "original_encoding", (False, True))
        encoding = (bool(implicit), little is not False)
        marks = self._marks.get(encoding)
        if marks is None:
            marks = self._marks[encoding] = self._encoded_marks(*encoding)
        for elem in marks:
            ds[elem.tag] = elem

    def _encoded_marks(self, implicit: bool, little: bool) -> list[Any]:
        from pydicom import dcmread

        buffer = io.BytesIO()
        self.marks_dataset().save_as(buffer, implicit_vr=implicit, little_endian=little)
        read = dcmread(io.BytesIO(buffer.getvalue()), force=True)
        # as read elements at no position in any file (0): writers copy their bytes, encoding nothing
        return [read.get_item(tag)._replace(value_tell=0) for tag in read.keys()]  # noqa: SIM118

    def marks_dataset(self) -> Any:
        """The marks as a dataset: PatientIdentityRemoved, the method and its codes, the dates' status."""
        from pydicom.dataset import Dataset

        marks = Dataset()
        marks.PatientIdentityRemoved = "YES"
        marks.DeidentificationMethod = self.method
        codes = []
        for value, meaning in self.profile.codes():
            code = Dataset()
            code.CodeValue = value
            code.CodingSchemeDesignator = _CODING_SCHEME
            code.CodeMeaning = meaning
            codes.append(code)
        marks.DeidentificationMethodCodeSequence = codes
        if self.profile.keeps_dates:
            marks.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif self.profile.shifts_dates:
            marks.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            marks.LongitudinalTemporalInformationModified = "REMOVED"
        return marks

    def _check_leaks(self, header: bytes, encodings: list[str], context: _Context, where: str) -> None:
        """Refuse a result whose header still holds a value the profile removed or replaced, unless an
        option kept the same value on purpose elsewhere (dates, UIDs, an institution: context.kept)."""
        suspects = context.removed - context.kept
        if not suspects or found_in(header, suspects, encodings) is None:
            return
        if found_in(header, context.without_kept(suspects), encodings) is not None:
            raise BadInput(
                "an identifying value is still in the de-identified result; not written", where=where
            )


#: what pydicom raises on a damaged or cut-off file (struct.error: a length field cut in two)
_UNREADABLE = (
    InvalidDicomError,
    BytesLengthException,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    OSError,
    struct.error,
    NotImplementedError,  # a VR pydicom does not know
)


def _values_as_read(ds: Any) -> set[str]:
    """The values of DS's elements still as read (kept without being decoded), at every depth; not our
    marks (put in as read elements at no position) nor pixel data. Decoded apart: DS is not changed."""
    from pydicom.dataelem import convert_raw_data_element

    found: set[str] = set()
    for tag in ds.keys():  # noqa: SIM118 - the elements as read, not decoded
        elem = ds.get_item(tag)
        if getattr(elem, "is_raw", False):
            if elem.value_tell == 0 or int(tag) in _PIXELS:
                continue
            elem = convert_raw_data_element(elem, encoding=ds._character_set, ds=ds)
            if elem.VR != "SQ":
                found.update(_values(elem.value))
                continue
        if elem.VR == "SQ":  # decoded by the walk; its items may hold elements as read
            for item in elem.value or []:
                found |= _values_as_read(item)
    return found


def _unreadable(exc: BaseException, where: str) -> BadInput:
    if isinstance(exc, EOFError | struct.error | BytesLengthException) or "length" in str(exc).lower():
        return BadInput(f"truncated or corrupt: not readable as DICOM ({type(exc).__name__})", where=where)
    return BadInput(f"not readable as DICOM ({type(exc).__name__}: {exc})", where=where)


def _check_whole(ds: Any, where: str) -> None:
    """Raises BadInput when an element as read is shorter than its header says: the file was cut short
    (pydicom, asked to read what it can, stops quietly at the end of the data)."""
    for tag in ds.keys():  # noqa: SIM118 - the elements as read, not decoded
        elem = ds.get_item(tag)
        if (
            getattr(elem, "is_raw", False)
            and elem.length != 0xFFFFFFFF
            and len(elem.value or b"") < elem.length
        ):
            raise BadInput(f"truncated: the file ends inside element {tag}", where=where)


def _check_end(ds: Any, size: int, where: str) -> None:
    """Raises BadInput when bytes follow the last element read: a cut-off element pydicom passed over."""
    if not ds.keys():
        return
    last = ds.get_item(max(ds.keys()))
    if getattr(last, "is_raw", False) and last.length != 0xFFFFFFFF and last.value_tell is not None:
        left = size - (last.value_tell + last.length)
        if left > 0:
            raise BadInput(
                f"truncated or damaged: {left} bytes after the last element cannot be read", where=where
            )


@functools.cache
def _dictionary_vr(tag: int) -> str:
    """The VR of an element read without one (implicit VR): the dictionary's, else UN."""
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


@functools.cache
def _vr_fits(tag: int, vr: str) -> bool:
    """Whether an element's VR is one the dictionary gives its tag ("US or SS": either; an unknown
    tag, UN or a VR pydicom has not resolved yet: any)."""
    expected = _dictionary_vr(tag)
    return vr == expected or expected == "UN" or vr == "UN" or " or " in vr or vr in expected.split(" or ")


def _is_standard_uid(value: str) -> bool:
    """A UID the standard defines (SOP classes, transfer syntaxes, coding schemes): no one's identity."""
    from pydicom.uid import UID_dictionary

    return value.strip() in UID_dictionary


@functools.cache
def _keyword(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or ""


def _encoded(values: list[str], encodings: list[str]) -> list[bytes]:
    """VALUES as ENCODINGS write them, ASCII letters in lower case (compared with lowered bytes)."""
    found: set[bytes] = set()
    for value in values:
        for encoding in encodings:
            try:
                found.add(value.encode(encoding).lower())
            except (UnicodeEncodeError, LookupError):
                continue
    return [needle for needle in found if needle]


def _cap_age(text: str) -> str:
    """PatientAge of 90 years or more as 090Y (HIPAA Safe Harbor: ages over 89 are one group)."""
    match = re.fullmatch(r"(\d{3})Y", text.strip())
    if match and int(match[1]) > 89:
        return "090Y"
    return text


def _cut(value: Any, identifiers: list[str]) -> Any:
    """Text with each of the patient's own identifiers cut out (descriptions under Clean Descriptors), in
    any case; a short one (a surname like Lee) only as a whole word, so that other words stay whole."""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [_cut(item, identifiers) for item in value]
    text = str(value)
    for identifier in identifiers:
        pattern = re.escape(identifier)
        if len(identifier) < 4:
            pattern = rf"(?<!\w){pattern}(?!\w)"
        text = re.sub(pattern, "", text, flags=re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", text).strip()
