"""Where identities hide from a careless de-identifier: attributes written as UN, names in capitals, the
patient module's newer attributes, a forged "already shifted" flag, a file without a PatientID."""

from __future__ import annotations

import io
import logging
import struct
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from pacsflow.anonymize.deidentify import Deidentifier
from pacsflow.anonymize.keys import Keys
from pacsflow.anonymize.mapping import MappingPseudonyms
from pacsflow.anonymize.profile import DEFAULT_OPTIONS, load_profile
from pacsflow.errors import BadInput
from pacsflow.ledger import Ledger
from pacsflow.ops.deidentifying import deidentify_checked

KEYS = Keys.from_text("edges-secret-0123456789abcdef")
NAME, PATIENT, BIRTH = "Smithson^Johnathan", "PID998877", "19620314"


@pytest.fixture
def deidentifier(tmp_path: Path) -> Iterator[Deidentifier]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    pseudonyms = MappingPseudonyms(ledger, KEYS, "ANON-{hash}")
    yield Deidentifier(load_profile(DEFAULT_OPTIONS), KEYS, pseudonyms, version="test")
    ledger.close()


def instance() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66"  # Raw Data: no pixels expected
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7433.77.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.7433.77.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7433.77.3"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = PATIENT, NAME, BIRTH
    ds.StudyDate, ds.Modality = "20200101", "CT"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def encoded(ds: Dataset, extra: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue() + extra


def as_un(tag: int, value: bytes) -> bytes:
    """An element as a PACS that does not know it writes it: explicit VR UN."""
    if len(value) % 2:
        value += b" "
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"UN\0\0" + struct.pack("<I", len(value)) + value


def test_attributes_written_as_un_are_treated_by_their_real_vr(deidentifier: Deidentifier) -> None:
    evaluator = as_un(0x00142006, b"Adeyemi^Ngozi")  # EvaluatorName (PN), unlisted
    text = as_un(0x0040A160, b"Seen by Dr Ngozi Adeyemi, 12 Elm St")  # TextValue (UT), unlisted
    result = deidentify_checked(deidentifier, encoded(instance(), evaluator + text), "f")
    assert b"Adeyemi" not in result.data and b"Elm St" not in result.data


def test_a_name_in_capitals_is_cut_from_text_the_profile_keeps(deidentifier: Deidentifier) -> None:
    ds = instance()
    ds.WindowCenterWidthExplanation = "SMITHSON JOHNATHAN WINDOW"  # kept by the table
    result = deidentify_checked(deidentifier, encoded(ds), "f")
    assert b"SMITHSON" not in result.data.upper() and b"JOHNATHAN" not in result.data.upper()
    assert dcmread(io.BytesIO(result.data)).WindowCenterWidthExplanation == "WINDOW"


def test_the_patient_modules_unlisted_attributes_are_removed(deidentifier: Deidentifier) -> None:
    ds = instance()
    ds.add_new(0x00100033, "LO", "S37.03.14")  # Patient's Birth Date in Alternative Calendar
    result = deidentify_checked(deidentifier, encoded(ds), "f")
    assert b"S37.03.14" not in result.data
    assert 0x00100033 not in dcmread(io.BytesIO(result.data))


def test_an_already_shifted_flag_alone_does_not_spare_the_dates(deidentifier: Deidentifier) -> None:
    ds = instance()
    ds.LongitudinalTemporalInformationModified = "MODIFIED"  # but the identity is still there
    result = deidentify_checked(deidentifier, encoded(ds), "f")
    assert dcmread(io.BytesIO(result.data)).StudyDate != "20200101"
    assert result.record.date_shift != 0


def test_a_file_without_a_patient_id_is_refused(deidentifier: Deidentifier) -> None:
    ds = instance()
    ds.PatientID = ""
    with pytest.raises(BadInput, match="no PatientID"):
        deidentify_checked(deidentifier, encoded(ds), "f")


@pytest.mark.parametrize(
    ("flags", "shown"), [((), False), (("verbose",), False), (("verbose", "log_phi"), True)]
)
def test_a_librarys_warnings_are_log_lines_shown_only_with_log_phi(
    flags: tuple[str, ...], shown: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    from pacsflow.logs import configure_logging

    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers = [logging.StreamHandler(sys.stderr)]  # as a command's own stderr
    try:
        with warnings.catch_warnings():  # pytest records warnings itself: as a command has them instead
            warnings.simplefilter("always")
            logging.captureWarnings(False)  # as a fresh process: an earlier command here captured them
            warnings.showwarning = warnings._showwarning_orig  # type: ignore[attr-defined]
            configure_logging(**{flag: True for flag in flags})
            warnings.warn("Invalid value for VR DA: '1962-03-14'", UserWarning, stacklevel=1)
            logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Smithson^Johnathan'")
            logging.captureWarnings(False)
    finally:
        root.handlers = handlers
    err = capsys.readouterr().err
    assert ("1962-03-14" in err and "Smithson" in err) == shown, err
    assert ("1962-03-14" in err or "Smithson" in err) == shown, err
