"""Where pseudonyms come from: a counter kept in the mapping, or a CSV (R4), used and recorded; a patient
without a row, or a pseudonym that already stands for someone else, is refused, never let through."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import cli
from tests.phi_corpus import write_corpus

SECRET = "test-secret-0123456789abcdef-csv"


@pytest.fixture
def project(workdir: Path) -> Path:
    (workdir / "pacsflow.toml").write_text(f'[anonymize]\nsecret = "{SECRET}"\n')
    write_corpus(workdir / "corpus", burned_in=False)
    return workdir


def join(csv: str) -> tuple[str, ...]:
    return ("--csv", csv, "--csv-key", "MRN")


def pseudonyms_written(out: Path) -> dict[str, str]:
    """Each output file's PatientID and StudyDescription, by the folder (pseudonym) it is in."""
    found = {}
    for path in out.rglob("*.dcm"):
        ds = dcmread(path, stop_before_pixels=True)
        found[str(ds.PatientID)] = str(ds.get("StudyDescription", ""))
    return found


def test_the_csv_gives_pseudonyms_and_values_and_the_mapping_records_them(project: Path) -> None:
    (project / "ids.csv").write_text(
        "MRN,PatientID,StudyDescription\n"
        "NORD-100234,STUDY-001,Cohort A\n"
        "OST-770312,STUDY-002,Cohort A\n"
        "TKY-550871,STUDY-003,Cohort B\n"
    )
    result = cli("anonymize", "corpus", "--out", "out", "--csv", "ids.csv", "--csv-key", "MRN", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert pseudonyms_written(project / "out") == {
        "STUDY-001": "Cohort A",
        "STUDY-002": "Cohort A",
        "STUDY-003": "Cohort B",
    }
    lookup = cli("mapping", "lookup", "STUDY-003", cwd=project)
    assert lookup.returncode == 0 and "patient_id=TKY-550871" in lookup.stdout


def test_a_patient_without_a_row_is_refused(project: Path) -> None:
    (project / "ids.csv").write_text("MRN,PatientID\nNORD-100234,STUDY-001\n")
    result = cli("anonymize", "corpus", "--out", "out", "--csv", "ids.csv", "--csv-key", "MRN", cwd=project)
    assert result.returncode == 1
    assert set(pseudonyms_written(project / "out")) == {"STUDY-001"}
    failed = cli("run", "show", "last", "--failed", cwd=project).stdout
    assert "no row for its patient in ids.csv (column MRN)" in failed


def test_a_pseudonym_taken_by_another_patient_is_refused_and_the_mapping_stays_consistent(
    project: Path,
) -> None:
    (project / "ids.csv").write_text("MRN,PatientID\nNORD-100234,STUDY-001\n")
    first = cli("anonymize", "corpus/NORD-100234", "--out", "out", *join("ids.csv"), cwd=project)
    assert first.returncode == 0, first.stdout + first.stderr
    (project / "other.csv").write_text("MRN,PatientID\nTKY-550871,STUDY-001\n")
    result = cli("anonymize", "corpus/TKY-550871", "--out", "out", *join("other.csv"), cwd=project)
    assert result.returncode == 1
    failed = cli("run", "show", "last", "--failed", cwd=project).stdout
    assert "its pseudonym already stands for another patient" in failed
    first_patients = len(list((project / "corpus" / "NORD-100234").rglob("*.dcm")))
    assert len(list((project / "out").rglob("*.dcm"))) == first_patients  # none of the second patient's
    assert set(pseudonyms_written(project / "out")) == {"STUDY-001"}
    assert cli("mapping", "check", cwd=project).returncode == 0


def test_a_counter_format_numbers_patients_once_and_keeps_their_numbers(project: Path) -> None:
    first = cli("anonymize", "corpus/NORD-100234", "--out", "out", "--pseudonym", "ANON-{n:06d}", cwd=project)
    assert first.returncode == 0, first.stdout + first.stderr
    second = cli("anonymize", "corpus", "--out", "out", "--pseudonym", "ANON-{n:06d}", cwd=project)
    assert second.returncode == 0, second.stdout + second.stderr
    assert set(pseudonyms_written(project / "out")) == {"ANON-000001", "ANON-000002", "ANON-000003"}
    lookup = cli("mapping", "lookup", "ANON-000001", cwd=project)
    assert "patient_id=NORD-100234" in lookup.stdout  # the first run's patient kept number 1
