"""Local de-identification (`pacsflow anonymize PATH --out DIR`, --verify, mapping) on the PHI corpus."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from sqlalchemy import func, select
from typer.testing import CliRunner

from pacsflow.anonymize.dates import shift_date
from pacsflow.ledger import Ledger
from pacsflow.ledger.schema import mapping, pseudonyms
from tests.phi_corpus import (
    DETACHED_PATIENT,
    DETACHED_STUDY,
    ROOT_UID,
    Corpus,
    PlantedFile,
    encoded_in,
    write_corpus,
)

SECRET = "pacsflow-test-secret-0123456789abcdef"
OTHER_SECRET = "another-test-secret-fedcba9876543210"
SECRET_VAR = "PACSFLOW_ANONYMIZE__SECRET"
NORD, TOKYO, OSLO = "NORD-100234", "TKY-550871", "OST-770312"
#: a time of day ("HHMMSS.ffffff", one or several): the default Retain Longitudinal Temporal Information
#: Modified Dates option shifts dates by whole days and keeps times of day by design (PS3.15 E.3.6)
TM_LIKE = re.compile(r"\d{6}\.\d{6}(\\\d{6}\.\d{6})*")
IMAGE_KINDS = ("ct", "us", "sc")
DETACHED = (DETACHED_PATIENT, DETACHED_STUDY)


# -- helpers ----------------------------------------------------------------------------------------


def pf(tmp: Path, *args: str, ledger: str = "ledger.db") -> subprocess.CompletedProcess[str]:
    """`pacsflow --ledger sqlite:///TMP/LEDGER ARGS` in this process; PACSFLOW_* variables (the secret) as
    the test set them (tests.conftest.cli drops them)."""
    from pacsflow.cli import app

    url = f"sqlite:///{tmp / ledger}"
    result = CliRunner().invoke(app, ["--ledger", url, *args], catch_exceptions=False)
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def run(
    tmp: Path, *paths: Path | str, out: str = "out", ledger: str = "ledger.db", extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`pacsflow anonymize PATHS --out TMP/OUT EXTRA`."""
    return pf(tmp, "anonymize", *map(str, paths), "--out", str(tmp / out), *extra, ledger=ledger)


def outputs(out: Path) -> dict[str, Path]:
    """Output files by their SOPInstanceUID."""
    found = {}
    for path in sorted(out.rglob("*.dcm")):
        found[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return found


def tree(out: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()
    }


def rows(tmp: Path, ledger: str = "ledger.db") -> list[Any]:
    """The ledger's mapping rows."""
    db = Ledger(f"sqlite:///{tmp / ledger}", create=False)
    try:
        with db.engine.connect() as conn:
            return conn.execute(select(mapping).order_by(mapping.c.id)).all()
    finally:
        db.close()


def pairs(corpus: Corpus, tmp: Path, out: str = "out") -> list[tuple[PlantedFile, Path]]:
    """Each corpus file with its de-identified copy (by the mapping's sop_uid -> new_sop_uid)."""
    new = {row.sop_uid: row.new_sop_uid for row in rows(tmp) if row.target.endswith(out)}
    written = outputs(tmp / out)
    return [(planted, written[new[planted.sop_uid]]) for planted in corpus.files if planted.sop_uid in new]


def one(corpus: Corpus, patient: str, study: int, kind: str = "ct") -> PlantedFile:
    return next(
        f
        for f in corpus.files
        if f.patient == patient and f.kind == kind and f.path.parent.parent.name == str(study)
    )


def study_date(path: Path) -> dt.date:
    return dt.datetime.strptime(
        str(pydicom.dcmread(path, stop_before_pixels=True).StudyDate), "%Y%m%d"
    ).date()


def references(ds: Dataset) -> list[str]:
    """Every ReferencedSOPInstanceUID at any depth, in dataset order, that names a stored instance (not
    the retired detached patient and study classes, whose sequences the profile may empty)."""
    found = []
    for elem in ds.iterall():
        if elem.VR == "SQ":
            for item in elem.value:
                if "ReferencedSOPInstanceUID" in item and item.get("ReferencedSOPClassUID") not in DETACHED:
                    found.append(str(item.ReferencedSOPInstanceUID))
    return found


@pytest.fixture
def tmp(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private working folder (no config file, no PACSFLOW_* but the project secret)."""
    monkeypatch.setenv(SECRET_VAR, SECRET)
    return workdir


@pytest.fixture
def corpus(tmp: Path) -> Corpus:
    return write_corpus(tmp / "in")


@pytest.fixture
def done(tmp: Path, corpus: Corpus) -> Corpus:
    """The corpus de-identified into TMP/out (burned-in files allowed) with the ledger TMP/ledger.db."""
    result = run(tmp, corpus.root, extra=("--allow-burned-in",))
    assert result.returncode == 0, result.stdout + result.stderr
    return corpus


# -- 1. the round trip ------------------------------------------------------------------------------


def test_round_trip_leaves_no_phi_and_no_original_uid(tmp: Path, corpus: Corpus) -> None:
    result = run(tmp, corpus.root, extra=("--allow-burned-in",))
    assert result.returncode == 0, result.stdout + result.stderr
    written = {path: path.read_bytes() for path in (tmp / "out").rglob("*.dcm")}
    assert len(written) == len(corpus.files) == 19
    phi = {value for values in corpus.phi.values() for value in values if not TM_LIKE.fullmatch(value)}
    uids = {uid for values in corpus.uids.values() for uid in values}
    leaks = []
    for path, data in written.items():
        for value in phi:
            for encoding in ("utf-8", "latin-1"):
                try:
                    needle = value.encode(encoding)
                except UnicodeEncodeError:
                    continue
                if needle in data:
                    leaks.append((path.name, value, encoding))
        leaks += [(path.name, uid, "uid") for uid in uids if uid.encode() in data]
    assert leaks == []


def test_round_trip_marks_files_and_keeps_what_the_profile_keeps(tmp: Path, done: Corpus) -> None:
    for planted, path in pairs(done, tmp):
        data = path.read_bytes()
        assert data[:128] == b"\0" * 128 and data[128:132] == b"DICM", path.name
        before, after = pydicom.dcmread(planted.path), pydicom.dcmread(path)
        assert after.PatientIdentityRemoved == "YES"
        codes = {str(item.CodeValue) for item in after.DeidentificationMethodCodeSequence}
        assert {"113100", "113107"} <= codes
        assert [elem.tag for elem in after.iterall() if elem.tag.is_private] == []  # none kept by default
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        assert (after.Modality, after.SOPClassUID) == (before.Modality, before.SOPClassUID)
        if planted.kind in IMAGE_KINDS:
            assert (after.Rows, after.Columns) == (before.Rows, before.Columns)
            assert after.PixelData == before.PixelData


# -- 2. burned-in text ------------------------------------------------------------------------------


def test_burned_in_files_are_refused_by_default(tmp: Path, corpus: Corpus) -> None:
    burned = [f for f in corpus.files if f.burned_in]
    assert len(burned) == 3
    result = run(tmp, corpus.root)
    assert result.returncode == 1, result.stdout + result.stderr
    db = Ledger(f"sqlite:///{tmp / 'ledger.db'}", create=False)
    try:
        failed = db.items(db.run("last").id, status="failed")
    finally:
        db.close()
    errors = {Path(item.key).resolve(): item.last_error or "" for item in failed}
    assert set(errors) == {f.path.resolve() for f in burned}
    assert all("burned-in" in error for error in errors.values())
    # none of them was written: only the others are in the tree and in the mapping
    assert len(outputs(tmp / "out")) == len(corpus.files) - 3
    assert {row.sop_uid for row in rows(tmp)} == {f.sop_uid for f in corpus.files if not f.burned_in}
    shown = pf(tmp, "run", "show", "last", "--failed")
    assert shown.returncode == 0
    for planted in burned:
        line = next((line for line in shown.stdout.splitlines() if str(planted.path) in line), "")
        assert "burned-in" in line, shown.stdout


# -- 3, 4. the same secret, the same result ---------------------------------------------------------


def test_two_runs_with_fresh_ledgers_write_identical_trees(tmp: Path, corpus: Corpus) -> None:
    first = run(tmp, corpus.root, out="out1", ledger="one.db", extra=("--allow-burned-in",))
    second = run(tmp, corpus.root, out="out2", ledger="two.db", extra=("--allow-burned-in",))
    assert first.returncode == second.returncode == 0
    one_tree, two_tree = tree(tmp / "out1"), tree(tmp / "out2")
    assert len(one_tree) == 19
    assert one_tree == two_tree


def test_a_later_run_gives_a_known_patient_the_same_pseudonym_and_shift(tmp: Path, corpus: Corpus) -> None:
    counter = ("--pseudonym", "PAT-{n:04d}", "--allow-burned-in")
    # a counter, not a hash: Yamada is PAT-0001, Müller PAT-0002; only the ledger can make the last run
    # (Müller's second study) agree, where a fresh count would give PAT-0001
    for paths, out in (((TOKYO, "1"), "out1"), ((NORD, "1"), "out1"), ((NORD, "2"), "out2")):
        result = run(tmp, corpus.root.joinpath(*paths), out=out, extra=counter)
        assert result.returncode == 0, result.stdout + result.stderr
    mapped = rows(tmp)
    known = {(row.pseudonym, row.date_shift) for row in mapped if row.patient_id == NORD}
    assert {row.target.rsplit("/", 1)[-1] for row in mapped if row.patient_id == NORD} == {"out1", "out2"}
    assert len(known) == 1  # one pseudonym and one date shift for all of Müller's rows, in both runs
    [(pseudonym, shift)] = known
    assert {row.pseudonym for row in mapped if row.patient_id == TOKYO} != {pseudonym}
    assert pseudonym == "PAT-0002"
    later = pairs(corpus, tmp, "out2")
    assert len(later) == 4
    for planted, path in later:
        after = pydicom.dcmread(path, stop_before_pixels=True)
        assert after.PatientID == pseudonym
        original = pydicom.dcmread(planted.path, stop_before_pixels=True).StudyDate
        assert after.StudyDate == shift_date(original, shift)
    db = Ledger(f"sqlite:///{tmp / 'ledger.db'}", create=False)
    try:
        with db.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(pseudonyms)).scalar() == 2
    finally:
        db.close()


def test_another_secret_gives_other_pseudonyms_and_uids(
    tmp: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(tmp, corpus.root, out="out1", ledger="one.db", extra=("--allow-burned-in",))
    monkeypatch.setenv(SECRET_VAR, OTHER_SECRET)
    second = run(tmp, corpus.root, out="out2", ledger="two.db", extra=("--allow-burned-in",))
    assert first.returncode == second.returncode == 0
    one_rows, two_rows = rows(tmp, "one.db"), rows(tmp, "two.db")
    one_ids = {row.patient_id: row.pseudonym for row in one_rows}
    two_ids = {row.patient_id: row.pseudonym for row in two_rows}
    assert set(one_ids) == set(two_ids) == {NORD, TOKYO, OSLO}
    assert all(one_ids[patient] != two_ids[patient] for patient in one_ids)

    def new_uids(found: list[Any]) -> set[str]:
        return {uid for row in found for uid in (row.new_study_uid, row.new_series_uid, row.new_sop_uid)}

    assert len(new_uids(one_rows)) == len(new_uids(two_rows)) > 19
    assert new_uids(one_rows).isdisjoint(new_uids(two_rows))


# -- 5. references ----------------------------------------------------------------------------------


def test_references_lead_to_the_new_instances(tmp: Path, done: Corpus) -> None:
    new_sop = {row.sop_uid: row.new_sop_uid for row in rows(tmp)}
    written = outputs(tmp / "out")
    checked = 0
    for planted, path in pairs(done, tmp):
        before, after = pydicom.dcmread(planted.path), pydicom.dcmread(path)
        assert after.SOPClassUID == before.SOPClassUID
        assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
        old_refs, new_refs = references(before), references(after)
        assert len(old_refs) == len(new_refs), path.name
        for old, new in zip(old_refs, new_refs, strict=True):
            assert old in new_sop  # every such reference of the corpus names a corpus instance
            assert new == new_sop[old] and new in written, (planted.path, old)
            checked += 1
    assert checked == 16  # RT structure set 6, SR evidence and content 5, presentation state 3, derived CT 2


def test_frame_of_reference_is_shared_after_deidentification(tmp: Path, done: Corpus) -> None:
    found = dict(
        (p.kind, pydicom.dcmread(path))
        for p, path in pairs(done, tmp)
        if p.patient == NORD and p.path.parent.parent.name == "1" and p.kind in ("ct", "rtstruct")
    )
    ct, rt = found["ct"], found["rtstruct"]
    frame = str(ct.FrameOfReferenceUID)
    assert not frame.startswith(ROOT_UID)
    assert str(rt.FrameOfReferenceUID) == frame
    assert str(rt.StructureSetROISequence[0].ReferencedFrameOfReferenceUID) == frame
    assert str(rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID) == frame
    cts = [
        pydicom.dcmread(path)
        for p, path in pairs(done, tmp)
        if p.patient == NORD and p.kind == "ct" and p.path.parent.parent.name == "1"
    ]
    assert {str(ds.FrameOfReferenceUID) for ds in cts} == {frame}


# -- 6. dates ---------------------------------------------------------------------------------------


def test_study_dates_move_by_the_patients_shift(tmp: Path, done: Corpus) -> None:
    shifts = {row.patient_id: row.date_shift for row in rows(tmp)}
    assert len(shifts) == 3 and 0 not in shifts.values()
    for planted, path in pairs(done, tmp):
        before = pydicom.dcmread(planted.path, stop_before_pixels=True)
        after = pydicom.dcmread(path, stop_before_pixels=True)
        assert after.StudyDate == shift_date(before.StudyDate, shifts[planted.patient]) != before.StudyDate


def test_two_studies_of_a_patient_keep_their_interval(tmp: Path, done: Corpus) -> None:
    copies = {(p.patient, p.path.parent.parent.name, p.kind): path for p, path in pairs(done, tmp)}
    for patient in (NORD, TOKYO, OSLO):
        first, second = one(done, patient, 1), one(done, patient, 2)
        interval = study_date(second.path) - study_date(first.path)
        moved = study_date(copies[(patient, "2", "ct")]) - study_date(copies[(patient, "1", "ct")])
        assert moved == interval and interval.days > 0


def test_a_datetime_keeps_its_time_and_utc_offset(tmp: Path, done: Corpus) -> None:
    shifts = {row.patient_id: row.date_shift for row in rows(tmp)}
    checked = 0
    for planted, path in pairs(done, tmp):
        if planted.kind not in ("ct", "us"):
            continue
        before = str(pydicom.dcmread(planted.path, stop_before_pixels=True).AcquisitionDateTime)
        after = str(pydicom.dcmread(path, stop_before_pixels=True).AcquisitionDateTime)
        assert re.fullmatch(r"\d{14}\.\d{6}[+-]\d{4}", before)
        assert after[8:] == before[8:]  # time of day and UTC offset as written
        assert after[:8] == shift_date(before[:8], shifts[planted.patient]) != before[:8]
        checked += 1
    assert checked == 15


def test_patient_age_removed_by_default(tmp: Path, done: Corpus) -> None:
    for _, path in pairs(done, tmp):
        # the table's X for a single element is written empty (a Type 2 element keeps its IOD valid)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert "PatientAge" in ds and ds.PatientAge == ""


def test_patient_age_over_89_becomes_90_when_characteristics_are_kept(tmp: Path, corpus: Corpus) -> None:
    result = run(tmp, corpus.root, extra=("--allow-burned-in", "--option", "retain-patient-characteristics"))
    assert result.returncode == 0, result.stdout + result.stderr
    ages = {}
    for planted, path in pairs(corpus, tmp):
        ages.setdefault(planted.patient, set()).add(pydicom.dcmread(path, stop_before_pixels=True).PatientAge)
    assert ages == {NORD: {"090Y"}, TOKYO: {"043Y"}, OSLO: {"061Y"}}


# -- 7, 8. the mapping ------------------------------------------------------------------------------


def test_lookup_of_a_pseudonym_gives_the_original_patient(tmp: Path, done: Corpus) -> None:
    pseudonym = next(row.pseudonym for row in rows(tmp) if row.patient_id == NORD)
    result = pf(tmp, "mapping", "lookup", pseudonym)
    assert result.returncode == 0, result.stderr
    assert f"patient_id={NORD}" in result.stdout
    assert TOKYO not in result.stdout and OSLO not in result.stdout
    missing = pf(tmp, "mapping", "lookup", "ANON-NOBODY")
    assert missing.returncode == 1 and "not in the mapping" in missing.stderr


def test_mapping_export_is_private_with_a_row_per_instance(tmp: Path, done: Corpus) -> None:
    target = tmp / "mapping.csv"
    result = pf(tmp, "mapping", "export", str(target))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with target.open(newline="", encoding="utf-8") as fh:
        exported = list(csv.DictReader(fh))
    assert len(exported) == 19
    assert {row["sop_uid"] for row in exported} == {f.sop_uid for f in done.files}
    assert {row["new_sop_uid"] for row in exported} == set(outputs(tmp / "out"))
    assert {(row["study_uid"], row["new_study_uid"]) for row in exported} == {
        (row.study_uid, row.new_study_uid) for row in rows(tmp)
    }


@pytest.mark.parametrize("kind", ["uid-pairs", "patient-pairs"])
def test_pair_exports_have_old_new_columns(tmp: Path, done: Corpus, kind: str) -> None:
    target = tmp / f"{kind}.csv"
    result = pf(tmp, "mapping", "export", str(target), "--format", kind)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with target.open(newline="", encoding="utf-8") as fh:
        found = list(csv.reader(fh))
    assert found[0] == ["old", "new"]
    pairs_found = dict(found[1:])
    mapped = rows(tmp)
    if kind == "patient-pairs":
        assert pairs_found == {row.patient_id: row.pseudonym for row in mapped}
    else:
        assert {row.sop_uid: row.new_sop_uid for row in mapped}.items() <= pairs_found.items()
        assert {row.study_uid: row.new_study_uid for row in mapped}.items() <= pairs_found.items()


def test_mapping_check_finds_a_patient_with_two_pseudonyms(tmp: Path, done: Corpus) -> None:
    clean = pf(tmp, "mapping", "check")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "consistent" in clean.stdout
    original = next(row for row in rows(tmp) if row.patient_id == NORD)
    db = Ledger(f"sqlite:///{tmp / 'ledger.db'}", create=False)
    try:
        values = dict(original._mapping)
        del values["id"]
        values.update(pseudonym="ANON-SOMEONE-ELSE", target="folder:/elsewhere", created_at=time.time())
        with db.transaction() as conn:
            conn.execute(mapping.insert().values(**values))
    finally:
        db.close()
    conflict = pf(tmp, "mapping", "check")
    assert conflict.returncode == 1
    assert "two pseudonyms" in conflict.stdout
    assert NORD not in conflict.stdout + conflict.stderr  # values only with --log-phi


# -- 9. the output is as valid DICOM as the input ---------------------------------------------------


def _errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("kind", ["ct", "rtstruct", "sr", "pr", "us", "sc"])
def test_dciodvfy_finds_no_new_errors(tmp: Path, done: Corpus, kind: str) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy (Debian package dicom3tools) is installed by `make system`"
    checked = 0
    for planted, path in pairs(done, tmp):
        if planted.kind != kind:
            continue
        before, after = _errors(planted.path), _errors(path)
        new = sorted(set(after) - set(before))
        assert new == [], f"{planted.path.relative_to(done.root)}: {new}"
        checked += 1
    assert checked >= 1


# -- 10. the verifier -------------------------------------------------------------------------------


def _leak_name(ds: Dataset, planted: PlantedFile, corpus: Corpus) -> None:
    ds.ImageComments = corpus.patients[planted.patient]["PatientName"].split("=")[0]


def _unshift_date(ds: Dataset, planted: PlantedFile, corpus: Corpus) -> None:
    ds.StudyDate = pydicom.dcmread(planted.path, stop_before_pixels=True).StudyDate


def _dangle(ds: Dataset, planted: PlantedFile, corpus: Corpus) -> None:
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "2.25.1234567890123456789"


def _private(ds: Dataset, planted: PlantedFile, corpus: Corpus) -> None:
    ds.private_block(0x0011, "ACME LEFTOVER", create=True).add_new(0x01, "LO", "kept by mistake")


def _no_pixels(ds: Dataset, planted: PlantedFile, corpus: Corpus) -> None:
    del ds.PixelData


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_leak_name, "identifying value"),
        (_unshift_date, "StudyDate"),
        (_dangle, "leads to no instance"),
        (_private, "private"),
        (_no_pixels, "pixel data removed"),
    ],
    ids=["leaked name", "unshifted date", "dangling reference", "private tag", "pixel data removed"],
)
def test_verify_catches_a_spoiled_file(
    tmp: Path, done: Corpus, change: Callable[[Dataset, PlantedFile, Corpus], None], problem: str
) -> None:
    # the derived CT of Müller's first study: it has a ReferencedImageSequence to spoil
    planted = next(
        f
        for f in done.files
        if f.patient == NORD and f.path.relative_to(done.root).parts[1:] == ("1", "1", "3.dcm")
    )
    path = next(out for p, out in pairs(done, tmp) if p.sop_uid == planted.sop_uid)
    ds = pydicom.dcmread(path)
    change(ds, planted, done)
    ds.save_as(path, enforce_file_format=True)
    result = pf(tmp, "anonymize", "--verify", str(tmp / "out"))
    assert result.returncode == 1, result.stdout
    lines = [line for line in result.stdout.splitlines() if path.name in line]
    assert lines and any(problem in line for line in lines), result.stdout
    assert all(line.startswith(path.name) for line in result.stdout.splitlines() if ": " in line)


@pytest.mark.parametrize(
    "syntax",
    [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
    ids=["implicit VR", "big endian", "deflated"],
)
def test_every_transfer_syntax_is_deidentified_and_verified(tmp: Path, corpus: Corpus, syntax: str) -> None:
    for planted in corpus.files:
        planted.path.write_bytes(encoded_in(pydicom.dcmread(planted.path), syntax))
    result = run(tmp, corpus.root, extra=("--allow-burned-in",))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "de-identified 19," in result.stdout
    assert pf(tmp, "anonymize", "--verify", str(tmp / "out")).returncode == 0
    # the name leaked into one file, written in the same syntax: caught there, and only there
    planted, path = next((p, out) for p, out in pairs(corpus, tmp) if p.kind == "ct")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    _leak_name(ds, planted, corpus)
    path.write_bytes(encoded_in(ds, syntax))
    result = pf(tmp, "anonymize", "--verify", str(tmp / "out"))
    assert result.returncode == 1, result.stdout
    flagged = [line for line in result.stdout.splitlines() if "identifying value" in line]
    assert len(flagged) == 1 and flagged[0].startswith(path.name), result.stdout


def test_verify_finds_a_name_in_a_character_set_switched_by_escapes(tmp: Path, done: Corpus) -> None:
    # ISO 2022 IR 87 writes 山田先生 with one escape before it and one after: the bytes of 山田 alone
    # (escape, 山田, escape back) are not in the file; its decoded text holds the name
    path = next(out for p, out in pairs(done, tmp) if p.patient == TOKYO and p.kind == "ct")
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.ImageComments = "山田先生"
    ds.save_as(path, enforce_file_format=True)
    assert "山田".encode("iso2022_jp") not in path.read_bytes()
    result = pf(tmp, "anonymize", "--verify", str(tmp / "out"))
    assert result.returncode == 1, result.stdout
    flagged = [line for line in result.stdout.splitlines() if "identifying value" in line]
    assert len(flagged) == 1 and flagged[0].startswith(path.name), result.stdout
    ds.ImageComments = "先生"  # the same file without the name passes
    ds.save_as(path, enforce_file_format=True)
    assert pf(tmp, "anonymize", "--verify", str(tmp / "out")).returncode == 0


def test_verify_passes_the_untouched_output(tmp: Path, done: Corpus) -> None:
    result = pf(tmp, "anonymize", "--verify", str(tmp / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified 19 files" in result.stdout


# -- 11. bad input and the secret -------------------------------------------------------------------


def _truncated(corpus: Corpus, where: str) -> bytes:
    """A corpus CT under a SOP instance UID of its own, cut short at WHERE (DICM at 128, too few bytes)."""
    ds = pydicom.dcmread(one(corpus, NORD, 1).path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ROOT_UID}.99.1"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # after (0002,0000) File Meta Group Length
    if where == "meta":
        return data[: (132 + meta_end) // 2]
    stream = io.BytesIO(data)
    stream.seek(meta_end)
    at = {raw.tag: raw for raw in data_element_generator(stream, False, True)}
    if where == "sequence":  # half-way through the Request Attributes Sequence
        sequence = at[Tag("RequestAttributesSequence")]
        return data[: sequence.value_tell + sequence.length // 2]
    pixels = at[Tag("PixelData")]
    if where == "length":  # in the middle of the pixel data element's 4-byte value length
        return data[: pixels.value_tell - 2]
    return data[: pixels.value_tell + pixels.length // 2]  # half of the pixels


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("meta", "not a DICOM instance (no SOPInstanceUID or StudyInstanceUID)"),
        ("sequence", "truncated: the file ends inside element (0040,0275)"),
        ("length", "truncated or corrupt: not readable as DICOM"),
        ("pixels", "truncated: the pixel data lacks 4096 bytes"),
    ],
    ids=["in the file meta", "in a sequence", "in an element header", "in the pixel data"],
)
def test_bad_input_is_counted_and_the_run_goes_on(
    tmp: Path, corpus: Corpus, where: str, expected: str
) -> None:
    (corpus.root / "notes.txt").write_text("call Mr Müller back\n", encoding="utf-8")
    data = _truncated(corpus, where)
    assert data[128:132] == b"DICM"
    (corpus.root / "cut.dcm").write_bytes(data)
    result = run(tmp, corpus.root, extra=("--allow-burned-in",))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not DICOM 1, failed 1" in result.stdout, result.stdout
    assert len(outputs(tmp / "out")) == 19  # every good file, and nothing of the truncated one
    db = Ledger(f"sqlite:///{tmp / 'ledger.db'}", create=False)
    try:
        failed = db.items(db.run("last").id, status="failed")
    finally:
        db.close()
    assert [Path(item.key).name for item in failed] == ["cut.dcm"]
    error = failed[0].last_error or ""
    assert "\n" not in error and "unexpected" not in error, error
    assert expected in error, error


def test_a_missing_secret_stops_before_anything_is_written(
    tmp: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_VAR)
    result = run(tmp, corpus.root, extra=("--allow-burned-in",))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--new-secret" in result.stderr
    out = tmp / "out"
    assert not out.exists() or not any(out.iterdir())


def test_new_secret_prints_a_fresh_long_secret(tmp: Path) -> None:
    found = []
    for _ in range(2):
        result = pf(tmp, "anonymize", "--new-secret")
        assert result.returncode == 0
        match = re.search(r'^secret = "([^"]+)"$', result.stdout, re.MULTILINE)
        assert match, result.stdout
        found.append(match[1])
    assert all(len(secret) >= 32 for secret in found) and found[0] != found[1]


# -- 12, 13. resume and rerun -----------------------------------------------------------------------


def test_a_planned_run_is_resumed(tmp: Path, corpus: Corpus) -> None:
    planned = run(tmp, corpus.root, extra=("--allow-burned-in", "--plan-only"))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert not outputs(tmp / "out")
    resumed = pf(tmp, "resume", "last")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(outputs(tmp / "out")) == 19
    assert len(rows(tmp)) == 19


def test_resume_with_another_secret_is_refused(
    tmp: Path, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned = run(tmp, corpus.root, extra=("--allow-burned-in", "--plan-only"))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    monkeypatch.setenv(SECRET_VAR, OTHER_SECRET)
    resumed = pf(tmp, "resume", "last")
    assert resumed.returncode == 2
    assert "not the one this run started with" in resumed.stderr
    assert not outputs(tmp / "out")


def test_a_rerun_into_the_same_folder_writes_nothing_new(tmp: Path, done: Corpus) -> None:
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in (tmp / "out").rglob("*.dcm")}
    count = len(rows(tmp))
    again = run(tmp, done.root, extra=("--allow-burned-in",))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "de-identified 0, written before 19" in again.stdout and "0 new mapping rows" in again.stdout
    after = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in (tmp / "out").rglob("*.dcm")}
    assert after == before
    assert len(rows(tmp)) == count == 19


# -- 14. speed --------------------------------------------------------------------------------------


def test_the_corpus_is_done_in_well_under_20_seconds(tmp: Path, corpus: Corpus) -> None:
    start = time.monotonic()
    result = run(tmp, corpus.root, extra=("--allow-burned-in",))
    elapsed = time.monotonic() - start
    assert result.returncode == 0
    assert elapsed < 20, f"{elapsed:.1f}s"
