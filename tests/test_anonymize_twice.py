"""De-identifying twice: our own output passes through unchanged (dates not shifted twice), but marks
copied onto a file that still names its patient do not spare it."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.conftest import cli
from tests.phi_corpus import Corpus, write_corpus

SECRET = "test-secret-0123456789abcdef-twice"


@pytest.fixture
def corpus(workdir: Path) -> Corpus:
    (workdir / "pacsflow.toml").write_text(f'[anonymize]\nsecret = "{SECRET}"\n')
    return write_corpus(workdir / "corpus", burned_in=False)


def tree(folder: Path) -> dict[Path, bytes]:
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*.dcm")}


def test_our_own_output_passes_through_unchanged(workdir: Path, corpus: Corpus) -> None:
    first = cli("anonymize", "corpus", "--out", "once", cwd=workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    second = cli("anonymize", "once", "--out", "twice", cwd=workdir)
    assert second.returncode == 0, second.stdout + second.stderr
    assert tree(workdir / "twice") == tree(workdir / "once")  # same names, same bytes: nothing moved again
    assert "0 new mapping rows" in second.stdout


def test_copied_marks_do_not_spare_a_file_that_names_its_patient(workdir: Path, corpus: Corpus) -> None:
    planted = corpus.files[0]
    forged = pydicom.dcmread(planted.path)
    forged.PatientIdentityRemoved = "YES"
    forged.DeidentificationMethod = ["pacsflow 0.1.0", "PS3.15 2025e E.1-1 Basic Profile"]
    (workdir / "forged").mkdir()
    forged.save_as(workdir / "forged" / "one.dcm", enforce_file_format=True)
    result = cli("anonymize", "forged", "--out", "out", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    [written] = (workdir / "out").rglob("*.dcm")
    ds = pydicom.dcmread(written, stop_before_pixels=True)
    assert str(ds.PatientID) != planted.patient and str(ds.PatientID).startswith("ANON-")
    assert str(ds.SOPInstanceUID) != planted.sop_uid
    assert planted.patient.encode() not in written.read_bytes()


def test_a_file_posing_as_our_output_is_cleaned_of_what_was_added(workdir: Path, corpus: Corpus) -> None:
    first = cli("anonymize", "corpus", "--out", "once", cwd=workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    ours = sorted((workdir / "once").rglob("*.dcm"))[0]
    posing = pydicom.dcmread(ours)  # our marks and a real pseudonym, with a name and a birth date added
    posing.PatientName = "Intruder^Real"
    posing.PatientBirthDate = "19500101"
    posing.OtherPatientIDs = "MRN-4711"
    (workdir / "posing").mkdir()
    posing.save_as(workdir / "posing" / "one.dcm", enforce_file_format=True)
    result = cli("anonymize", "posing", "--out", "out", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    [written] = (workdir / "out").rglob("*.dcm")
    data = written.read_bytes()
    for value in (b"Intruder", b"19500101", b"MRN-4711"):
        assert value not in data
    ds = pydicom.dcmread(written, stop_before_pixels=True)
    assert str(ds.PatientName) == str(ds.PatientID) == str(posing.PatientID)  # its pseudonym kept
    assert str(ds.SOPInstanceUID) == str(posing.SOPInstanceUID)  # its UIDs kept (remapped once only)
