"""The PHI test corpus is deterministic, readable, and its manifest tells the truth about its bytes."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.charset import python_encoding
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from tests.phi_corpus import LOOKALIKE_PRIVATE, SAFE_PRIVATE, Corpus, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("phi-a"))


def _files(root: Path) -> dict[Path, bytes]:
    return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*.dcm"))}


def _tags(ds: Dataset) -> set[str]:
    """Every keyword (or private tag) used anywhere in a dataset, sequences included."""
    found: set[str] = set()
    for elem in ds:
        # keyword_for_tag, unlike elem.keyword, also names repeating groups (overlays 60xx, curves 50xx)
        found.add(keyword_for_tag(elem.tag) or f"{elem.tag.group:04X},{elem.tag.element:04X}")
        if elem.VR == "SQ":
            for item in elem.value:
                found |= _tags(item)
    return found


def test_same_call_same_bytes(corpus: Corpus, tmp_path: Path) -> None:
    again = write_corpus(tmp_path)
    assert _files(corpus.root) == _files(again.root)
    assert len(corpus.files) == len(_files(corpus.root)) == 19
    assert sum(len(data) for data in _files(corpus.root).values()) < 1_000_000


def test_every_file_reads_back_as_planted(corpus: Corpus) -> None:
    for planted in corpus.files:
        ds = pydicom.dcmread(planted.path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == planted.sop_uid
        assert (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, ds.Modality) == (
            planted.patient,
            planted.study_uid,
            planted.series_uid,
            planted.sop_class_uid,
            planted.modality,
        )
        assert ds.PatientName == corpus.patients[planted.patient]["PatientName"]
        if planted.burned_in:
            assert ds.BurnedInAnnotation == "YES"
        elif "BurnedInAnnotation" in ds:
            assert ds.BurnedInAnnotation == "NO"


def test_manifest_is_true(corpus: Corpus) -> None:
    for planted in corpus.files:
        raw = planted.path.read_bytes()
        encoding = python_encoding[pydicom.dcmread(planted.path).SpecificCharacterSet]
        phi, uids = corpus.phi[str(planted.path)], corpus.uids[str(planted.path)]
        assert planted.patient in phi and planted.sop_uid in uids
        assert [value for value in phi if value.encode(encoding) not in raw] == []
        assert [uid for uid in uids if uid.encode("ascii") not in raw] == []
    latin1 = [f for f in corpus.files if b"ISO_IR 100" in f.path.read_bytes()]
    assert latin1 and all("Øster^Åse".encode("latin-1") in f.path.read_bytes() for f in latin1)


def test_every_place_is_planted(corpus: Corpus) -> None:
    used: set[str] = set()
    for planted in corpus.files:
        used |= _tags(pydicom.dcmread(planted.path))
    places = {
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientBirthDate",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientAge",
        "PatientSex",
        "PatientWeight",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
        "DeviceSerialNumber",
        "StudyDescription",
        "SeriesDescription",
        "ImageComments",
        "AdditionalPatientHistory",
        "RequestAttributesSequence",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "ReferencedPatientSequence",
        "AcquisitionDateTime",
        "DateOfLastCalibration",
        "ProtocolContextSequence",
        "FrameOfReferenceUID",
        "ReferencedImageSequence",
        "SourceImageSequence",
        "IconImageSequence",
        "OverlayData",
        "OverlayLabel",
        "OverlayDescription",
        "CurveData",
        "CurveLabel",
        "GraphicAnnotationSequence",
        "UnformattedTextValue",
        "ContentSequence",
        "PersonName",
        "DateTime",
        "UID",
        "CurrentRequestedProcedureEvidenceSequence",
        "ContourImageSequence",
        "RTReferencedSeriesSequence",
        "ReferencedFrameOfReferenceUID",
        "0009,1001",
        "0019,1023",
        "0019,1123",
    }
    assert sorted(places - used) == []
    ds = pydicom.dcmread(corpus.files[1].path)
    assert ds[0x00190010].value == SAFE_PRIVATE[0] and ds[0x00190011].value == LOOKALIKE_PRIVATE[0]
    assert b"NORD-100234" in corpus.files[0].path.read_bytes()[:128]  # the preamble
    assert {f.kind for f in corpus.files} == {"ct", "rtstruct", "sr", "pr", "us", "sc"}


def test_without_burned_in(corpus: Corpus, tmp_path: Path) -> None:
    clean = write_corpus(tmp_path, burned_in=False)
    burned = [f for f in corpus.files if f.burned_in]
    assert sorted(f.kind for f in burned) == ["ct", "sc", "us"]
    assert not any(f.burned_in for f in clean.files)
    left_out = {f.path.relative_to(corpus.root) for f in burned}
    expected = {k: v for k, v in _files(corpus.root).items() if k not in left_out}
    assert _files(clean.root) == expected
