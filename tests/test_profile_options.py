"""The PS3.15 options do what the standard's columns say: safe private attributes kept by creator and offset,
UIDs or full dates kept, descriptions cleaned rather than removed."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.conftest import cli
from tests.phi_corpus import LOOKALIKE_PRIVATE, SAFE_PRIVATE, Corpus, write_corpus

SECRET = "test-secret-0123456789abcdef-options"


@pytest.fixture
def corpus(workdir: Path) -> Corpus:
    (workdir / "pacsflow.toml").write_text(f'[anonymize]\nsecret = "{SECRET}"\n')
    return write_corpus(workdir / "corpus", burned_in=False)


def outputs(workdir: Path, *options: str) -> list[pydicom.Dataset]:
    flags = [part for option in options for part in ("--option", option)]
    result = cli("anonymize", "corpus", "--out", "out", *flags, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    return [
        pydicom.dcmread(path, stop_before_pixels=True) for path in sorted((workdir / "out").rglob("*.dcm"))
    ]


def private_values(ds: pydicom.Dataset, creator: str, group: int, offset: int) -> list[str]:
    try:
        block = ds.private_block(group, creator)
    except KeyError:
        return []
    return [str(block[offset].value)] if offset in block else []


def test_retain_safe_private_keeps_the_listed_element_and_drops_its_lookalike(
    workdir: Path, corpus: Corpus
) -> None:
    written = outputs(workdir, "retain-safe-private", "retain-long-modified-dates")
    kept = [value for ds in written for value in private_values(ds, *SAFE_PRIVATE)]
    assert kept and set(kept) == {"39.375"}
    assert not [value for ds in written for value in private_values(ds, *LOOKALIKE_PRIVATE)]
    assert all(not private_values(ds, "ACME PHI", 0x0009, 0x01) for ds in written)
    verified = cli("anonymize", "--verify", "out", cwd=workdir)
    assert verified.returncode == 0, verified.stdout + verified.stderr  # the safe element is not a finding


def test_by_default_no_private_element_is_left(workdir: Path, corpus: Corpus) -> None:
    for ds in outputs(workdir):
        assert not [elem for elem in ds.iterall() if elem.tag.is_private]


def test_retain_uids_keeps_every_uid_and_still_replaces_the_patient(workdir: Path, corpus: Corpus) -> None:
    written = outputs(workdir, "retain-uids", "retain-long-modified-dates")
    originals = {(f.study_uid, f.series_uid, f.sop_uid) for f in corpus.files}
    assert {
        (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for ds in written
    } == (originals)
    assert not {str(ds.PatientID) for ds in written} & set(corpus.patients)


def test_retain_full_dates_keeps_every_date(workdir: Path, corpus: Corpus) -> None:
    originals = {
        f.sop_uid: str(pydicom.dcmread(f.path, stop_before_pixels=True).StudyDate) for f in corpus.files
    }
    kept = outputs(workdir, "retain-long-full-dates", "retain-uids")
    assert {str(ds.SOPInstanceUID): str(ds.StudyDate) for ds in kept} == originals
    assert {str(ds.LongitudinalTemporalInformationModified) for ds in kept} == {"UNMODIFIED"}


def test_clean_descriptors_keeps_descriptions_without_the_patients_name(
    workdir: Path, corpus: Corpus
) -> None:
    removed = outputs(workdir)
    assert {str(ds.get("StudyDescription", "")) for ds in removed} == {""}
    cleaned = outputs(workdir, "clean-descriptors", "retain-long-modified-dates")
    descriptions = {str(ds.get("StudyDescription", "")) for ds in cleaned}
    assert descriptions - {""}, "clean-descriptors keeps the description text"
    names = {
        part for info in corpus.patients.values() for part in info["PatientName"].replace("=", "^").split("^")
    }
    assert not [text for text in descriptions for name in names if len(name) > 2 and name in text]


def test_dates_without_an_option_are_emptied(workdir: Path, corpus: Corpus) -> None:
    written = outputs(workdir, "clean-descriptors")  # no date option: the Basic Profile empties dates
    assert {str(ds.StudyDate) for ds in written} == {""}
    assert {str(ds.LongitudinalTemporalInformationModified) for ds in written} == {"REMOVED"}
