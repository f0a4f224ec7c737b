"""A deterministic DICOM test corpus with health information planted wherever a de-identifier must look."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

#: every UID the corpus makes starts with this root, so a leftover original UID is easy to spot
ROOT_UID = "1.2.826.0.1.3680043.9.7433"
IMPLEMENTATION_UID = f"{ROOT_UID}.0.1"

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
SOP_CLASSES = {
    "ct": CT_IMAGE,
    "us": US_IMAGE,
    "sc": SC_IMAGE,
    "pr": GSPS,
    "sr": COMPREHENSIVE_SR,
    "rtstruct": RT_STRUCTURE_SET,
}
MODALITIES = {"ct": "CT", "us": "US", "sc": "OT", "pr": "PR", "sr": "SR", "rtstruct": "RTSTRUCT"}
# retired "detached" SOP classes that the standard still requires in these references
DETACHED_PATIENT = "1.2.840.10008.3.1.2.1.1"
DETACHED_STUDY = "1.2.840.10008.3.1.2.3.1"

#: the Retain Safe Private Option's sample (PS3.15 Table E.3.10-1): GEMS_ACQU_01 (0019,xx23) DS Table Speed
SAFE_PRIVATE = ("GEMS_ACQU_01", 0x0019, 0x23)
#: same group and offset as SAFE_PRIVATE, under a creator the 2025e table does not list: must not be kept
LOOKALIKE_PRIVATE = ("SIEMENS CT VA0  COAD", 0x0019, 0x23)
#: the burned-in "text" sits in these top rows of the burned-in images (Clean Pixel Data tests can check them)
BURNED_ROWS = 8

SIZE = 64


@dataclass
class PlantedFile:
    path: Path
    patient: str  # original PatientID
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    kind: str  # "ct", "sr", "pr", "rtstruct", "us", "sc"
    burned_in: bool  # True when the file must be refused by default (BurnedInAnnotation YES, or US/SC)


@dataclass
class Corpus:
    root: Path
    files: list[PlantedFile]
    phi: dict[str, list[str]]  # per file path: every identifying string value planted in it
    uids: dict[str, list[str]]  # per file path: every UID a de-identifier must remap
    patients: dict[str, dict[str, str]]  # PatientID -> its patient-level attributes


@dataclass(frozen=True)
class _Site:
    institution: str
    address: str
    department: str
    station: str
    serial: str
    referring: str
    performing: str
    operator: str
    reader: str


@dataclass(frozen=True)
class _Patient:
    pid: str
    name: str
    birth: str
    sex: str
    weight: str
    address: str
    phone: str
    issuer: str
    site: _Site
    family: str  # the name as free text writes it
    other_names: str = ""
    other_ids: tuple[tuple[str, str], ...] = ()
    mother: str = ""


@dataclass(frozen=True)
class _Series:
    kind: str
    count: int
    description: str
    burned: tuple[int, ...] = ()  # 1-based instance numbers with burned-in annotation


@dataclass(frozen=True)
class _Study:
    date: str
    time: str
    accession: str
    study_id: str
    description: str
    age: str
    charset: str
    series: tuple[_Series, ...]


NORD = _Site(
    "Klinikum Nord München",
    "Nordring 1, 80999 München",
    "Radiologie Nord",
    "CT-NORD-01",
    "SN-4711-0815",
    "Weber^Anna^^Dr.",
    "Schulz^Karl",
    "Becker^Lena",
    "Hoffmann^Petra",
)
TOKYO = _Site(
    "Tokyo Central Hospital",
    "2-1-1 Kanda, Chiyoda-ku, Tokyo 101-0047",
    "Central Radiology 2F",
    "CT-TKY-02",
    "TKY-2019-0042",
    "Suzuki^Hanako=鈴木^花子=すずき^はなこ",
    "Tanaka^Ichiro",
    "Sato^Yuki",
    "Kobayashi^Kenji",
)
OSLO = _Site(
    "Sykehuset Øst",
    "Sykehusveien 3, 0372 Oslo",
    "Radiologisk avdeling",
    "CT-OST-03",
    "NO-3377-2211",
    "Ødegård^Bjørn",
    "Hansen^Kari",
    "Lindqvist^Pål",
    "Berntsen^Solveig",
)

PATIENTS = (
    _Patient(
        "NORD-100234",
        "Müller^Jürgen",
        "19280305",
        "M",
        "82.35",
        "Hauptstraße 12, 80331 München",
        "+49 89 1234567",
        "KLINIKUM-NORD-MRN",
        NORD,
        "Müller",
        other_names="Mueller^Juergen\\Muller^Jurgen",
        other_ids=(("KH-998877", "KVNR-BAYERN"), ("AOK-A123456789", "AOK-BY")),
        mother="Schmidt^Helga",
    ),
    _Patient(
        "TKY-550871",
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "19750812",
        "M",
        "64.8",
        "3-4-5 Hongo, Bunkyo-ku, Tokyo 113-0033",
        "+81 3 3812 1111",
        "TOKYO-CENTRAL-PID",
        TOKYO,
        "山田太郎",
    ),
    _Patient(
        "OST-770312",
        "Øster^Åse",
        "19600229",
        "F",
        "58.4",
        "Storgata 5, 0155 Oslo",
        "+47 22 123456",
        "SYKEHUSET-OST-PID",
        OSLO,
        "Øster",
    ),
)

UTF8, LATIN1 = "ISO_IR 192", "ISO_IR 100"
STUDIES = (
    (
        _Study(
            "20200314",
            "093012.250000",
            "ACC20200314001",
            "CT4711A",
            "CT Thorax Müller Jürgen",
            "092Y",
            UTF8,
            (_Series("ct", 3, "Thorax 5mm Müller"), _Series("rtstruct", 1, "GTV contours Müller")),
        ),
        _Study(
            "20200601",
            "081545.500000",
            "ACC20200601007",
            "CT4711B",
            "CT Thorax follow-up Müller",
            "092Y",
            UTF8,
            (_Series("ct", 3, "Thorax 5mm Müller FU", burned=(3,)), _Series("sr", 1, "Report Müller")),
        ),
    ),
    (
        _Study(
            "20190120",
            "141001.125000",
            "ACC20190120042",
            "CT0815A",
            "CT Abdomen Yamada Tarou 山田",
            "043Y",
            UTF8,
            (_Series("ct", 2, "Abdomen venous 山田"), _Series("pr", 1, "Annotations Yamada")),
        ),
        _Study(
            "20190415",
            "101500.375000",
            "ACC20190415009",
            "CT0815B",
            "CT Abdomen control Yamada",
            "043Y",
            UTF8,
            (_Series("ct", 2, "Abdomen control Yamada"), _Series("us", 1, "Liver US Yamada", (1,))),
        ),
    ),
    (
        # Latin-1: the same name as bytes that differ from the UTF-8 study below
        _Study(
            "20210909",
            "160030.750000",
            "ACC20210909013",
            "CT3377A",
            "CT Hode Øster Åse",
            "061Y",
            LATIN1,
            (_Series("ct", 2, "Hode aksial Øster"),),
        ),
        _Study(
            "20211010",
            "113000.625000",
            "ACC20211010021",
            "CT3377B",
            "CT Hode kontroll Øster",
            "061Y",
            UTF8,
            (_Series("ct", 2, "Hode kontroll Øster"), _Series("sc", 1, "Skjermbilde Øster", (1,))),
        ),
    ),
)


def _uid(*parts: int) -> str:
    return ".".join([ROOT_UID, *map(str, parts)])


def study_uid(p: int, s: int) -> str:
    return _uid(1, p, s)


def series_uid(p: int, s: int, se: int) -> str:
    return _uid(2, p, s, se)


def sop_uid(p: int, s: int, se: int, i: int) -> str:
    return _uid(3, p, s, se, i)


def frame_uid(p: int, s: int) -> str:
    return _uid(4, p, s)


def other_uid(p: int, s: int, k: int) -> str:
    # k has two digits, so no corpus UID is another one's prefix (a leftover search can't match by accident)
    return _uid(5, p, s, k)


class _Rec:
    """What was planted in one file: identifying strings and UIDs, recorded as they are set."""

    def __init__(self) -> None:
        self.phi: list[str] = []
        self.uids: list[str] = []

    def p(self, value: str) -> str:
        if value not in self.phi:
            self.phi.append(value)
        return value

    def pn(self, value: str) -> str:
        """A person name: the whole value, each value, each component group and the distinctive components."""
        self.p(value)
        for one in value.split("\\"):
            self.p(one)
            for group in one.split("="):
                self.p(group)
                for component in group.split("^")[:3]:
                    if len(component) >= 3 or not component.isascii():
                        self.p(component)
        return value

    def ps(self, *values: str) -> str:
        """A multi-valued string: each value and the whole."""
        for value in values:
            self.p(value)
        return self.p("\\".join(values))

    def u(self, value: str) -> str:
        if value not in self.uids:
            self.uids.append(value)
        return value


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _sop_ref(rec: _Rec, sop_class: str, sop: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = rec.u(sop)
    return item


@dataclass
class _Ctx:
    """The place of one instance in the corpus."""

    p: int
    s: int
    se: int
    i: int
    patient: _Patient
    study: _Study
    series: _Series
    rec: _Rec = field(default_factory=_Rec)

    @property
    def burned(self) -> bool:
        return self.i in self.series.burned


def _common(c: _Ctx) -> Dataset:
    """Patient, study, series, equipment and SOP common attributes shared by every kind."""
    r, pt, st, site = c.rec, c.patient, c.study, c.patient.site
    ds = Dataset()
    ds.SpecificCharacterSet = st.charset
    ds.SOPClassUID = SOP_CLASSES[c.series.kind]
    ds.SOPInstanceUID = r.u(sop_uid(c.p, c.s, c.se, c.i))
    ds.InstanceCreationDate = r.p(st.date)
    ds.InstanceCreationTime = r.p(st.time)
    # patient
    ds.PatientName = r.pn(pt.name)
    ds.PatientID = r.p(pt.pid)
    ds.IssuerOfPatientID = r.p(pt.issuer)
    ds.PatientBirthDate = r.p(pt.birth)
    ds.PatientSex = pt.sex
    if pt.other_names:
        ds.OtherPatientNames = r.pn(pt.other_names)
    if pt.other_ids:
        items = []
        for other_id, issuer in pt.other_ids:
            item = Dataset()
            item.PatientID = r.p(other_id)
            item.IssuerOfPatientID = r.p(issuer)
            item.TypeOfPatientID = "TEXT"
            items.append(item)
        ds.OtherPatientIDsSequence = Sequence(items)
    if pt.mother:
        ds.PatientMotherBirthName = r.pn(pt.mother)
    ds.ReferencedPatientSequence = Sequence([_sop_ref(r, DETACHED_PATIENT, other_uid(c.p, 1, 11))])
    # study
    ds.StudyInstanceUID = r.u(study_uid(c.p, c.s))
    ds.StudyDate = r.p(st.date)
    ds.StudyTime = r.p(st.time)
    ds.ReferringPhysicianName = r.pn(site.referring)
    ds.StudyID = r.p(st.study_id)
    ds.AccessionNumber = r.p(st.accession)
    ds.StudyDescription = r.p(st.description)
    r.p(pt.family)
    ds.ReferencedStudySequence = Sequence([_sop_ref(r, DETACHED_STUDY, other_uid(c.p, c.s, 12))])
    ds.NameOfPhysiciansReadingStudy = r.pn(site.reader)
    ds.PatientAge = r.p(st.age)
    ds.PatientWeight = r.p(pt.weight)
    # series
    ds.Modality = MODALITIES[c.series.kind]
    ds.BodyPartExamined = ("CHEST", "ABDOMEN", "HEAD")[c.p - 1]  # unpaired, so Laterality may stay absent
    ds.SeriesInstanceUID = r.u(series_uid(c.p, c.s, c.se))
    ds.SeriesNumber = c.se
    ds.SeriesDate = r.p(st.date)
    ds.SeriesTime = r.p(st.time)
    ds.SeriesDescription = r.p(c.series.description)
    ds.OperatorsName = r.pn(site.operator)
    # equipment
    ds.Manufacturer = "ACME Imaging"
    ds.ManufacturerModelName = "PhantomScan 64"
    ds.SoftwareVersions = "1.0"
    ds.InstitutionName = r.p(site.institution)
    ds.InstitutionAddress = r.p(site.address)
    ds.InstitutionalDepartmentName = r.p(site.department)
    ds.StationName = r.p(site.station)
    ds.DeviceSerialNumber = r.p(site.serial)
    return ds


def _request_attributes(c: _Ctx) -> Sequence:
    """Request Attributes with a protocol context three levels down holding a name, a date and a UID."""
    r, st = c.rec, c.study
    context = []
    for value_type, concept, attr, value in (
        (
            "PNAME",
            _code("121008", "DCM", "Person Observer Name"),
            "PersonName",
            r.pn(c.patient.site.referring),
        ),
        ("DATE", _code("111060", "DCM", "Study Date"), "Date", r.p(st.date)),
        (
            "UIDREF",
            _code("121018", "DCM", "Procedure Study Instance UID"),
            "UID",
            r.u(other_uid(c.p, c.s, 13)),
        ),
    ):
        item = Dataset()
        item.ValueType = value_type
        item.ConceptNameCodeSequence = Sequence([concept])
        setattr(item, attr, value)
        context.append(item)
    protocol = _code("P-CT-" + st.study_id[-1], "99ACME", "CT protocol")
    protocol.ProtocolContextSequence = Sequence(context)
    request = Dataset()
    request.AccessionNumber = r.p(st.accession)
    request.StudyInstanceUID = r.u(study_uid(c.p, c.s))
    request.RequestedProcedureID = r.p(f"RP{st.date}{c.p}")
    request.RequestedProcedureDescription = "CT examination"
    request.ScheduledProcedureStepID = r.p(f"SPS{st.date[2:]}{c.p}{c.s}")
    request.ScheduledProcedureStepDescription = r.p(f"CT for {c.patient.family}")
    request.ScheduledProtocolCodeSequence = Sequence([protocol])
    return Sequence([request])


def _phantom(c: _Ctx) -> np.ndarray:
    """A body-shaped disc with a lesion; constant arithmetic, no randomness, so bytes never vary."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    body = (x - 32) ** 2 + ((y - 32) * 1.3) ** 2 < 26**2
    lesion = (x - 24 - 2 * c.i) ** 2 + (y - 28) ** 2 < 16
    return (body * 1064 + lesion * 180 + (x + y + 7 * c.i) % 16 * body).astype("<u2")


def _burn(pixels: np.ndarray, text: str, value: int) -> np.ndarray:
    """Stand-in for burned-in text: the ASCII bits of `text` as bright blocks in the top rows."""
    out = pixels.copy()
    for col, char in enumerate(text.encode("ascii")):
        for bit in range(BURNED_ROWS):
            if char >> bit & 1:
                out[bit, 2 * col + 1 : 2 * col + 3] = value
    return out


def _pixels(ds: Dataset, pixels: np.ndarray, bits: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.add_new(0x7FE00010, "OW" if bits > 8 else "OB", pixels.tobytes())


def _ct(c: _Ctx) -> Dataset:
    r, pt, st = c.rec, c.patient, c.study
    ds = _common(c)
    ds.PatientAddress = r.p(pt.address)
    ds.PatientTelephoneNumbers = r.p(pt.phone)
    ds.AdditionalPatientHistory = r.p(f"Referred for {pt.family}, ID {pt.pid}: smoker, prior resection")
    ds.PerformingPhysicianName = r.pn(pt.site.performing)
    ds.RequestAttributesSequence = _request_attributes(c)
    ds.ProtocolName = "Routine"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = r.u(frame_uid(c.p, c.s))
    ds.PositionReferenceIndicator = ""
    ds.DateOfLastCalibration = r.ps("20200101", "20200202")
    ds.TimeOfLastCalibration = r.ps("080000.000000", "081500.000000")
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = r.p(st.date)
    ds.AcquisitionTime = r.p(st.time)
    ds.AcquisitionDateTime = r.p(f"{st.date}{st.time}+0100")
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.IrradiationEventUID = r.u(_uid(6, c.p, c.s, c.se, c.i))
    ds.InstanceNumber = c.i
    ds.ContentDate = r.p(st.date)
    ds.ContentTime = r.p(st.time)
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageComments = r.p(f"Patient {pt.family} ({pt.pid}) moved during scan; phone {pt.phone}")
    ds.BurnedInAnnotation = "YES" if c.burned else "NO"
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = ["-22.5", "-22.5", f"{-50 + 5 * c.i}"]
    ds.SliceThickness = "5"
    ds.SliceLocation = f"{-50 + 5 * c.i}"
    ds.KVP = "120"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    pixels = _phantom(c)
    if c.burned:
        pixels = _burn(pixels, pt.pid, 4095)
    _pixels(ds, pixels, 12)
    return ds


def _add_overlay(ds: Dataset, c: _Ctx) -> None:
    """Overlay plane 6000 with a name in its label and description."""
    r = c.rec
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[20:36, 16:40] = 1
    ds.add_new(0x60000010, "US", SIZE)  # OverlayRows
    ds.add_new(0x60000011, "US", SIZE)  # OverlayColumns
    ds.add_new(0x60000022, "LO", r.p(f"ROI drawn for {c.patient.family}"))  # OverlayDescription
    ds.add_new(0x60000040, "CS", "G")  # OverlayType
    ds.add_new(0x60000050, "SS", [1, 1])  # OverlayOrigin
    ds.add_new(0x60000100, "US", 1)  # OverlayBitsAllocated
    ds.add_new(0x60000102, "US", 0)  # OverlayBitPosition
    ds.add_new(0x60001500, "LO", r.p(f"{c.patient.family} lesion"))  # OverlayLabel
    ds.add_new(0x60003000, "OW", np.packbits(mask, bitorder="little").tobytes())  # OverlayData


def _add_curve(ds: Dataset, c: _Ctx) -> None:
    """Retired curve group 5000, as raw elements with their VR: readers see it only as repeater tags."""
    r = c.rec
    points = np.array([[t, 100 + (t * 37) % 50] for t in range(8)], dtype="<u2")
    for tag, vr, value in (
        (0x50000005, "US", 2),  # CurveDimensions
        (0x50000010, "US", len(points)),  # NumberOfPoints
        (0x50000020, "CS", "PHYSIO"),  # TypeOfData
        (0x50000022, "LO", r.p(f"Respiration of {c.patient.family}")),  # CurveDescription
        (0x50000030, "SH", ["SEC", "CM"]),  # AxisUnits
        (0x50000103, "US", 0),  # DataValueRepresentation: unsigned short
        (0x50002500, "LO", r.p(f"{c.patient.family} {c.patient.pid}")),  # CurveLabel
        (0x50003000, "OW", points.tobytes()),  # CurveData
    ):
        ds.add(DataElement(tag, vr, value))


def _add_icon(ds: Dataset) -> None:
    icon = Dataset()
    _pixels(icon, (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4), 8)
    ds.IconImageSequence = Sequence([icon])


def _add_private(ds: Dataset, c: _Ctx, *, vendor_blocks: bool) -> None:
    """A private block full of PHI; maybe the safe GE block and a lookalike (same offset, other creator)."""
    r, pt = c.rec, c.patient
    acme = ds.private_block(0x0009, "ACME PHI", create=True)
    acme.add_new(0x01, "LO", r.p(pt.name.split("=")[0]))
    acme.add_new(0x02, "LO", r.p(pt.pid))
    nested = Dataset()
    nested.PatientName = r.pn(pt.name)
    nested.PatientBirthDate = r.p(pt.birth)
    acme.add_new(0x03, "SQ", Sequence([nested]))  # a standard name hidden inside a private sequence
    if vendor_blocks:
        ge = ds.private_block(SAFE_PRIVATE[1], SAFE_PRIVATE[0], create=True)
        ge.add_new(SAFE_PRIVATE[2], "DS", "39.375")
        siemens = ds.private_block(LOOKALIKE_PRIVATE[1], LOOKALIKE_PRIVATE[0], create=True)
        siemens.add_new(LOOKALIKE_PRIVATE[2], "DS", "512.5")


def _sr(c: _Ctx, refs: dict[tuple[int, int, int, int], str]) -> Dataset:
    """Comprehensive SR: names, dates, datetimes and UIDs in content items nested three levels deep."""
    r, pt, st = c.rec, c.patient, c.study
    ds = _common(c)
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    ds.InstanceNumber = c.i
    ds.ContentDate = r.p(st.date)
    ds.ContentTime = r.p(st.time)
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = r.pn(pt.site.reader)
    observer.VerifyingObserverIdentificationCodeSequence = Sequence([])
    observer.VerifyingOrganization = r.p(pt.site.institution)
    observer.VerificationDateTime = r.p(f"{st.date}120000.000000+0200")
    ds.VerifyingObserverSequence = Sequence([observer])
    ds.PerformedProcedureCodeSequence = Sequence([_code("24627-2", "LN", "CT Chest")])
    request = Dataset()
    request.StudyInstanceUID = r.u(study_uid(c.p, c.s))
    request.ReferencedStudySequence = Sequence([])
    request.AccessionNumber = r.p(st.accession)
    request.PlacerOrderNumberImagingServiceRequest = r.p(f"PO-{st.date}-77")
    request.FillerOrderNumberImagingServiceRequest = r.p(f"FO-{st.date}-78")
    request.RequestedProcedureID = r.p(f"RP{st.date}{c.p}")
    request.RequestedProcedureDescription = "CT Thorax"
    request.RequestedProcedureCodeSequence = Sequence([])
    ds.ReferencedRequestSequence = Sequence([request])

    def evidence(s: int, se: int, instances: Iterable[int]) -> Dataset:
        sops = Dataset()
        sops.SeriesInstanceUID = r.u(series_uid(c.p, s, se))
        sops.ReferencedSOPSequence = Sequence(
            [_sop_ref(r, CT_IMAGE, refs[(c.p, s, se, i)]) for i in instances]
        )
        item = Dataset()
        item.StudyInstanceUID = r.u(study_uid(c.p, s))
        item.ReferencedSeriesSequence = Sequence([sops])
        return item

    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence(c.s, 1, (1, 2))])
    ds.PertinentOtherEvidenceSequence = Sequence([evidence(1, 1, (1,))])

    def item(rel: str, value_type: str, concept: Dataset, **values: object) -> Dataset:
        it = Dataset()
        it.RelationshipType = rel
        it.ValueType = value_type
        it.ConceptNameCodeSequence = Sequence([concept])
        for key, value in values.items():
            setattr(it, key, value)
        return it

    def image(rel: str, s: int, i: int) -> Dataset:
        it = Dataset()
        it.RelationshipType = rel
        it.ValueType = "IMAGE"
        it.ReferencedSOPSequence = Sequence([_sop_ref(r, CT_IMAGE, refs[(c.p, s, 1, i)])])
        return it

    prior = STUDIES[c.p - 1][0].date
    finding = item(
        "CONTAINS",
        "TEXT",
        _code("121071", "DCM", "Finding"),
        TextValue=r.p(f"{pt.family} ({pt.pid}): 8 mm nodule unchanged since {prior}"),
    )
    finding.ContentSequence = Sequence(
        [
            image("INFERRED FROM", 1, 1),  # the prior study: a reference across studies
            item("HAS PROPERTIES", "DATE", _code("111060", "DCM", "Study Date"), Date=r.p(prior)),
            item(
                "HAS PROPERTIES",
                "PNAME",
                _code("121008", "DCM", "Person Observer Name"),
                PersonName=r.pn(pt.site.performing),
            ),
        ]
    )
    findings = item(
        "CONTAINS", "CONTAINER", _code("121070", "DCM", "Findings"), ContinuityOfContent="SEPARATE"
    )
    findings.ContentSequence = Sequence(
        [
            finding,
            item(
                "CONTAINS",
                "DATETIME",
                _code("111526", "DCM", "DateTime Started"),
                DateTime=r.p(f"{st.date}{st.time}+0200"),
            ),
            item(
                "CONTAINS",
                "UIDREF",
                _code("121018", "DCM", "Procedure Study Instance UID"),
                UID=r.u(study_uid(c.p, 1)),
            ),
            image("CONTAINS", c.s, 2),
        ]
    )
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = Sequence(
        [
            item(
                "HAS OBS CONTEXT",
                "PNAME",
                _code("121008", "DCM", "Person Observer Name"),
                PersonName=r.pn(pt.site.reader),
            ),
            item(
                "HAS OBS CONTEXT", "PNAME", _code("121029", "DCM", "Subject Name"), PersonName=r.pn(pt.name)
            ),
            item("HAS OBS CONTEXT", "TEXT", _code("121030", "DCM", "Subject ID"), TextValue=r.p(pt.pid)),
            item("HAS OBS CONTEXT", "DATE", _code("121031", "DCM", "Subject Birth Date"), Date=r.p(pt.birth)),
            item(
                "HAS OBS CONTEXT",
                "UIDREF",
                _code("121018", "DCM", "Procedure Study Instance UID"),
                UID=r.u(study_uid(c.p, c.s)),
            ),
            findings,
        ]
    )
    return ds


def _pr(c: _Ctx, refs: dict[tuple[int, int, int, int], str]) -> Dataset:
    """Grayscale Softcopy Presentation State whose text annotation spells the patient's name."""
    r, pt, st = c.rec, c.patient, c.study
    ds = _common(c)
    ds.InstanceNumber = c.i
    ds.ContentLabel = "ANNOTATION"
    ds.ContentDescription = r.p(f"Findings for {pt.family}")
    ds.ContentCreatorName = r.pn(pt.site.reader)
    ds.PresentationCreationDate = r.p(st.date)
    ds.PresentationCreationTime = r.p(st.time)
    images = [_sop_ref(r, CT_IMAGE, refs[(c.p, c.s, 1, i)]) for i in (1, 2)]
    series = Dataset()
    series.SeriesInstanceUID = r.u(series_uid(c.p, c.s, 1))
    series.ReferencedImageSequence = Sequence(images)
    ds.ReferencedSeriesSequence = Sequence([series])
    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner = [1, 1]
    area.DisplayedAreaBottomRightHandCorner = [SIZE, SIZE]
    area.PresentationSizeMode = "SCALE TO FIT"
    area.PresentationPixelSpacing = ["0.703125", "0.703125"]
    ds.DisplayedAreaSelectionSequence = Sequence([area])
    text = Dataset()
    text.BoundingBoxAnnotationUnits = "PIXEL"
    text.BoundingBoxTopLeftHandCorner = [2.0, 2.0]
    text.BoundingBoxBottomRightHandCorner = [62.0, 10.0]
    text.BoundingBoxTextHorizontalJustification = "LEFT"
    text.UnformattedTextValue = r.p(f"{pt.name.split('=')[0]} {pt.family} {pt.pid} *{pt.birth}")
    line = Dataset()
    line.GraphicAnnotationUnits = "PIXEL"
    line.GraphicDimensions = 2
    line.NumberOfGraphicPoints = 2
    line.GraphicData = [20.0, 20.0, 40.0, 36.0]
    line.GraphicType = "POLYLINE"
    line.GraphicFilled = "N"
    annotation = Dataset()
    annotation.ReferencedImageSequence = Sequence([_sop_ref(r, CT_IMAGE, refs[(c.p, c.s, 1, 1)])])
    annotation.GraphicLayer = "ANNOTATION"
    annotation.TextObjectSequence = Sequence([text])
    annotation.GraphicObjectSequence = Sequence([line])
    ds.GraphicAnnotationSequence = Sequence([annotation])
    layer = Dataset()
    layer.GraphicLayer = "ANNOTATION"
    layer.GraphicLayerOrder = 1
    layer.GraphicLayerDescription = r.p(f"Notes on {pt.family}")
    ds.GraphicLayerSequence = Sequence([layer])
    ds.ImageRotation = 0
    ds.ImageHorizontalFlip = "N"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    voi = Dataset()
    voi.WindowCenter = "40"
    voi.WindowWidth = "400"
    ds.SoftcopyVOILUTSequence = Sequence([voi])
    ds.PresentationLUTShape = "IDENTITY"
    return ds


def _rtstruct(c: _Ctx, refs: dict[tuple[int, int, int, int], str]) -> Dataset:
    """RT Structure Set whose four-level reference tree points at the study's CT instances."""
    r, pt, st = c.rec, c.patient, c.study
    cts = [(i, refs[(c.p, c.s, 1, i)]) for i in range(1, STUDIES[c.p - 1][c.s - 1].series[0].count + 1)]
    ds = _common(c)
    ds.InstanceNumber = c.i
    ds.StructureSetLabel = "GTV"
    ds.StructureSetName = r.p(f"GTV {pt.family}")
    ds.StructureSetDescription = r.p(f"Contoured by {pt.site.performing} for {pt.pid}")
    ds.FrameOfReferenceUID = r.u(frame_uid(c.p, c.s))
    ds.PositionReferenceIndicator = ""
    ds.StructureSetDate = r.p(st.date)
    ds.StructureSetTime = r.p(st.time)
    contour_images = Dataset()
    contour_images.SeriesInstanceUID = r.u(series_uid(c.p, c.s, 1))
    contour_images.ContourImageSequence = Sequence([_sop_ref(r, CT_IMAGE, sop) for _, sop in cts])
    study = _sop_ref(r, DETACHED_STUDY, study_uid(c.p, c.s))
    study.RTReferencedSeriesSequence = Sequence([contour_images])
    frame = Dataset()
    frame.FrameOfReferenceUID = r.u(frame_uid(c.p, c.s))
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = r.u(frame_uid(c.p, c.s))
    roi.ROIName = "GTV"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    for i, sop in cts:
        z = -50 + 5 * i
        contour = Dataset()
        contour.ContourImageSequence = Sequence([_sop_ref(r, CT_IMAGE, sop)])
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = 4
        contour.ContourData = [f"{v}" for v in (-8, -8, z, 8, -8, z, 8, 8, z, -8, 8, z)]
        contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = "GTV"
    observation.ROIInterpreter = r.pn(pt.site.performing)
    ds.RTROIObservationsSequence = Sequence([observation])
    ds.ApprovalStatus = "APPROVED"
    ds.ReviewDate = r.p(st.date)
    ds.ReviewTime = r.p(st.time)
    ds.ReviewerName = r.pn(pt.site.referring)
    return ds


def _burned_8bit(c: _Ctx) -> Dataset:
    """An 8-bit image whose top rows carry the patient ID, for the US and secondary capture kinds."""
    r, st = c.rec, c.study
    ds = _common(c)
    ds.InstanceNumber = c.i
    ds.ContentDate = r.p(st.date)
    ds.ContentTime = r.p(st.time)
    ds.PatientOrientation = ""
    ds.ImageComments = r.p(f"Screen of {c.patient.family}, {c.patient.pid}")
    ds.BurnedInAnnotation = "YES"
    pixels = (_phantom(c) // 8).astype(np.uint8)
    _pixels(ds, _burn(pixels, c.patient.pid, 255), 8)
    if c.series.kind == "us":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
        ds.AcquisitionDateTime = r.p(f"{st.date}{st.time}+0900")
    else:
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ConversionType = "WSD"
        ds.DateOfSecondaryCapture = r.p(st.date)
        ds.TimeOfSecondaryCapture = r.p(st.time)
    return ds


def _build(c: _Ctx, refs: dict[tuple[int, int, int, int], str]) -> FileDataset:
    kind = c.series.kind
    if kind == "ct":
        ds = _ct(c)
        if (c.p, c.s, c.i) == (1, 1, 2) or (c.p == 3 and c.s == 1):
            _add_overlay(ds, c)
            _add_private(ds, c, vendor_blocks=c.p == 1)
        if (c.p, c.s, c.i) == (1, 1, 2):
            _add_curve(ds, c)
            _add_icon(ds)
        if (c.p, c.s, c.i) == (1, 1, 3):
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.DerivationDescription = c.rec.p(
                f"Reformatted by {c.patient.site.operator} for {c.patient.family}"
            )
            ds.ReferencedImageSequence = Sequence([_sop_ref(c.rec, CT_IMAGE, refs[(1, 1, 1, 1)])])
            ds.SourceImageSequence = Sequence([_sop_ref(c.rec, CT_IMAGE, refs[(1, 1, 1, 2)])])
    elif kind == "sr":
        ds = _sr(c, refs)
    elif kind == "pr":
        ds = _pr(c, refs)
    elif kind == "rtstruct":
        ds = _rtstruct(c, refs)
    else:
        ds = _burned_8bit(c)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PACSFLOW_PHI_1"
    preamble = b"\0" * 128
    if (c.p, c.s, c.i) == (1, 1, 1) and kind == "ct":
        # Part 10 lets the preamble and file meta carry anything: a de-identifier must replace both
        meta.SourceApplicationEntityTitle = c.rec.p("KLINORD_CT01")
        meta.PrivateInformationCreatorUID = IMPLEMENTATION_UID
        meta.PrivateInformation = f"owner={c.patient.pid}".encode("ascii")
        text = f"PHI {c.patient.pid} {c.patient.name}".encode()
        preamble = text + b"\0" * (128 - len(text))
    out = FileDataset("", ds, file_meta=meta, preamble=preamble)
    return out


def write_corpus(root: Path, *, burned_in: bool = True) -> Corpus:
    """Write the corpus as <root>/<patient>/<study>/<series>/<instance>.dcm; the same call, the same bytes."""
    root = Path(root)
    refs = {
        (p, s, se, i): sop_uid(p, s, se, i)
        for p, studies in enumerate(STUDIES, 1)
        for s, study in enumerate(studies, 1)
        for se, series in enumerate(study.series, 1)
        for i in range(1, series.count + 1)
    }
    corpus = Corpus(root, [], {}, {}, {})
    for p, (patient, studies) in enumerate(zip(PATIENTS, STUDIES, strict=True), 1):
        corpus.patients[patient.pid] = _patient_attributes(patient)
        for s, study in enumerate(studies, 1):
            for se, series in enumerate(study.series, 1):
                for i in range(1, series.count + 1):
                    c = _Ctx(p, s, se, i, patient, study, series)
                    burned = c.burned or series.kind in ("us", "sc")
                    if burned and not burned_in:
                        continue
                    ds = _build(c, refs)
                    path = root / patient.pid / str(s) / str(se) / f"{i}.dcm"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    dcmwrite(path, ds, enforce_file_format=True)
                    corpus.files.append(
                        PlantedFile(
                            path,
                            patient.pid,
                            ds.StudyInstanceUID,
                            ds.SeriesInstanceUID,
                            ds.SOPInstanceUID,
                            ds.SOPClassUID,
                            ds.Modality,
                            series.kind,
                            burned,
                        )
                    )
                    corpus.phi[str(path)] = c.rec.phi
                    corpus.uids[str(path)] = c.rec.uids
    return corpus


def encoded_in(ds: Dataset, syntax: str) -> bytes:
    """DS written as a file in SYNTAX (explicit or implicit VR little endian, explicit VR big endian with
    its pixel bytes as they are, deflated)."""
    import io

    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    if syntax == ExplicitVRBigEndian:  # pydicom changes the byte order only when forced to
        dcmwrite(buffer, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        dcmwrite(buffer, ds, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue()


def _patient_attributes(pt: _Patient) -> dict[str, str]:
    attributes = {
        "PatientName": pt.name,
        "PatientID": pt.pid,
        "IssuerOfPatientID": pt.issuer,
        "PatientBirthDate": pt.birth,
        "PatientSex": pt.sex,
        "PatientWeight": pt.weight,
        "PatientAddress": pt.address,
        "PatientTelephoneNumbers": pt.phone,
    }
    if pt.other_names:
        attributes["OtherPatientNames"] = pt.other_names
    if pt.other_ids:
        attributes["OtherPatientIDs"] = "\\".join(other for other, _ in pt.other_ids)
    if pt.mother:
        attributes["PatientMotherBirthName"] = pt.mother
    return attributes
