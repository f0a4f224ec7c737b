"""De-identification on and between servers (anonymize --on, upload/transfer/download --anonymize): the
local path's pseudonyms and UIDs, no second copy on a rerun, deletions only of what was verified."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pydicom
import pytest

from pacsflow.orthanc import Orthanc
from tests.conftest import cli
from tests.phi_corpus import Corpus, write_corpus

SECRET = "test-secret-0123456789abcdef-server"


@pytest.fixture
def anon_config(config_file: Path) -> Path:
    """The test config with a project secret."""
    config_file.write_text(config_file.read_text() + f'\n[anonymize]\nsecret = "{SECRET}"\n')
    return config_file


def upload_corpus(client: Orthanc, root: Path, *, burned_in: bool = False) -> Corpus:
    corpus = write_corpus(root, burned_in=burned_in)
    for planted in corpus.files:
        client.upload(planted.path.read_bytes())
    return corpus


def patient_of_instance(client: Orthanc, instance: str) -> str:
    return client.resource("instances", instance)["MainDicomTags"].get("PatientID", "") or str(
        pydicom.dcmread(io.BytesIO(client.instance_file(instance)), stop_before_pixels=True).PatientID
    )


def study_ids(client: Orthanc) -> set[str]:
    return set(client.ids("studies"))


def patient_of(client: Orthanc, study: str) -> str:
    return client.resource("studies", study)["PatientMainDicomTags"]["PatientID"]


def tree_of(folder: Path) -> dict[Path, bytes]:
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*.dcm")}


def export_rows(workdir: Path) -> list[dict[str, str]]:
    result = cli("mapping", "export", "mapping.csv", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(workdir / "mapping.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_patients_two_studies_copied_in_two_runs_get_one_pseudonym(
    workdir: Path, anon_config: Path, client_a: Orthanc
) -> None:
    corpus = upload_corpus(client_a, workdir / "corpus")
    patient = corpus.files[0].patient
    studies = sorted({f.study_uid for f in corpus.files if f.patient == patient})
    assert len(studies) == 2
    originals = study_ids(client_a)
    for study_uid in studies:  # one run per study
        result = cli("anonymize", "--on", "a", "--study", study_uid, cwd=workdir)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 study copied de-identified and verified" in result.stdout
    copies = study_ids(client_a) - originals
    assert len(copies) == 2
    pseudonyms = {patient_of(client_a, copy) for copy in copies}
    assert len(pseudonyms) == 1 and patient not in pseudonyms
    rows = export_rows(workdir)
    assert {row["pseudonym"] for row in rows if row["patient_id"] == patient} == pseudonyms
    assert cli("mapping", "check", cwd=workdir).returncode == 0


def test_a_rerun_makes_no_second_copy_and_deletes_only_verified_originals(
    workdir: Path, anon_config: Path, client_a: Orthanc
) -> None:
    corpus = upload_corpus(client_a, workdir / "corpus", burned_in=True)
    originals = study_ids(client_a)
    first = cli("anonymize", "--on", "a", "--all", cwd=workdir)
    assert first.returncode == 1  # the burned-in files are refused by default
    assert "refused" in cli("run", "show", "last", "--failed", cwd=workdir).stdout
    copies = study_ids(client_a) - originals
    assert len(copies) == len(originals) == 6
    instances_before = len(client_a.ids("instances"))

    again = cli("anonymize", "--on", "a", "--all", cwd=workdir)
    assert again.returncode == 1
    assert "6 studies left alone: already de-identified copies" in again.stdout
    assert len(client_a.ids("instances")) == instances_before  # nothing sent twice

    deleting = cli("anonymize", "--on", "a", "--all", "--delete-original", cwd=workdir)
    assert deleting.returncode == 1
    refused = [f for f in corpus.files if f.burned_in]
    left = client_a.ids("instances")
    # every original whose copy was verified is gone; the three refused (never copied) stay
    assert len(left) == instances_before - (len(corpus.files) - len(refused))
    remaining_originals = {
        client_a.resource("instances", one)["MainDicomTags"]["SOPInstanceUID"] for one in left
    } & {f.sop_uid for f in corpus.files}
    assert remaining_originals == {f.sop_uid for f in refused}
    verified = cli("anonymize", "--verify", "--on", "a", "--query", "PatientID=ANON-*", cwd=workdir)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_upload_anonymize_sends_nothing_in_clear(workdir: Path, anon_config: Path, client_a: Orthanc) -> None:
    corpus = write_corpus(workdir / "corpus", burned_in=False)
    result = cli("upload", "corpus", "--to", "a", "--anonymize", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "16 new mapping rows" in result.stdout
    held = client_a.ids("instances")
    assert len(held) == len(corpus.files) == 16
    patients = {
        client_a.resource("patients", one)["MainDicomTags"]["PatientID"] for one in client_a.ids("patients")
    }
    assert patients.isdisjoint(corpus.patients)
    rows = export_rows(workdir)
    assert {row["orthanc_after"] for row in rows} == set(held)
    verified = cli("anonymize", "--verify", "--on", "a", "--query", "PatientID=ANON-*", cwd=workdir)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_local_download_and_transfer_paths_give_the_same_pseudonyms_and_uids(
    workdir: Path, anon_config: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    upload_corpus(client_a, workdir / "corpus")
    local = cli("anonymize", "corpus", "--out", "local", cwd=workdir)
    assert local.returncode == 0, local.stdout + local.stderr
    downloaded = cli("download", "--from", "a", "--out", "downloaded", "--anonymize", cwd=workdir)
    assert downloaded.returncode == 0, downloaded.stdout + downloaded.stderr
    # the same files, byte for byte, whichever way they were made
    assert tree_of(workdir / "downloaded") == tree_of(workdir / "local")

    moved = cli("transfer", "--from", "a", "--to", "b", "--anonymize", cwd=workdir)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    local_ids = {row["orthanc_after"] for row in export_rows(workdir) if row["target"].startswith("folder:")}
    assert set(client_b.ids("instances")) == local_ids
    again = cli("transfer", "--from", "a", "--to", "b", "--anonymize", cwd=workdir)
    assert again.returncode == 0 and "16 of them there before" in again.stdout
    assert cli("mapping", "check", cwd=workdir).returncode == 0


def test_an_original_whose_copy_fails_verification_is_not_deleted(
    workdir: Path, anon_config: Path, client_a: Orthanc
) -> None:
    corpus = upload_corpus(client_a, workdir / "corpus")
    first = cli("anonymize", "--on", "a", "--all", cwd=workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    row = export_rows(workdir)[0]
    spoiled_original = client_a.get_json(f"/instances/{row['orthanc_before']}/study")["ID"]
    originals = set(client_a.instance_ids_of("studies", spoiled_original))
    # someone puts one copy back with the patient's name in it, under the same pseudonym and UIDs
    copy = pydicom.dcmread(io.BytesIO(client_a.instance_file(row["orthanc_after"])))
    copy.ImageComments = corpus.patients[row["patient_id"]]["PatientName"].split("=")[0]
    client_a.delete_resource("instances", row["orthanc_after"])
    buffer = io.BytesIO()
    copy.save_as(buffer, enforce_file_format=True)
    client_a.upload(buffer.getvalue())
    other_originals = set(client_a.ids("instances")) - originals - {row["orthanc_after"]}
    other_originals = {
        one for one in other_originals if not patient_of_instance(client_a, one).startswith("ANON-")
    }

    deleting = cli("anonymize", "--on", "a", "--all", "--delete-original", cwd=workdir)
    assert deleting.returncode == 1
    failed = cli("run", "show", "last", "--failed", cwd=workdir).stdout
    assert "fails verification" in failed and "nothing deleted" in failed
    left = set(client_a.ids("instances"))
    assert originals <= left  # the study whose copy failed keeps every original
    assert other_originals and not other_originals & left  # the others' verified originals are gone
