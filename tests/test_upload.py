"""upload: folders, content sniffing, archives, bad input of every kind, CSV join, faults mid-run."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread

from pacsflow.dicomfiles import read_uids
from pacsflow.ledger import FAILED, Ledger
from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, instance_bytes, patient_id
from tests.conftest import run_cli

SHAPE = Shape(patients=2, studies=1, series=2, instances=3, pixels=16, seed=21)


def instances(shape: Shape = SHAPE) -> list[bytes]:
    return [
        instance_bytes(shape, p, st, se, i)
        for p in range(shape.patients)
        for st in range(shape.studies)
        for se in range(shape.series)
        for i in range(shape.instances)
    ]


def failures(workdir: Path) -> str:
    return run_cli("run", "show", "last", "--failed", cwd=workdir).stdout


def test_dicom_is_found_by_content_in_nested_folders(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = instances()
    for n, payload in enumerate(data):
        folder = workdir / "in" / f"level{n % 3}" / "deeper"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / [f"IMG{n:04d}", f"image{n}.jpg", f"x{n}.DCM"][n % 3]).write_bytes(payload)
    (workdir / "in" / "README.txt").write_text("not an image")
    (workdir / "in" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "DICOM 12, sent 12, already there 0, not DICOM 2, failed 0" in result.stdout
    assert client_a.statistics()["CountInstances"] == 12


def test_zip_tar_and_tar_gz_are_read_without_extracting(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = instances(Shape(patients=3, series=1, instances=4, pixels=16, seed=22))
    workdir.joinpath("in").mkdir()
    with zipfile.ZipFile(workdir / "in" / "a.zip", "w") as archive:
        for n, payload in enumerate(data[:4]):
            archive.writestr(f"study/{n}.dcm", payload)
        archive.writestr("study/notes.txt", "hello")
    for name, mode, chunk in (("b.tar", "w", data[4:8]), ("c.tgz", "w:gz", data[8:12])):
        with tarfile.open(workdir / "in" / name, mode) as archive:
            for n, payload in enumerate(chunk):
                info = tarfile.TarInfo(f"dir/{n}")
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    before = set(os.listdir(workdir / "in"))
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "(with 3 archives opened): DICOM 12, sent 12" in result.stdout
    assert "not DICOM 1" in result.stdout
    assert client_a.statistics()["CountInstances"] == 12
    assert set(os.listdir(workdir / "in")) == before  # nothing extracted next to the archives
    again = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert "sent 0, already there 12" in again.stdout


def test_corrupt_zip_and_unsafe_member_are_reported_and_the_rest_goes_on(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = instances()
    folder = workdir / "in"
    folder.mkdir()
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("ok.dcm", data[0])
    (folder / "broken.zip").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with zipfile.ZipFile(folder / "evil.zip", "w") as archive:
        archive.writestr("../../etc/escape.dcm", data[1])
        archive.writestr("fine.dcm", data[2])
    (folder / "plain.dcm").write_bytes(data[3])
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 1
    assert client_a.statistics()["CountInstances"] == 2  # fine.dcm and plain.dcm
    shown = failures(workdir)
    assert "broken.zip: corrupt ZIP archive" in shown
    assert "evil.zip!../../etc/escape.dcm: unsafe member name" in shown
    assert not (workdir.parent / "etc").exists()


def test_truncated_empty_fake_and_unreadable_files(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = instances()
    folder = workdir / "in"
    folder.mkdir()
    (folder / "good.dcm").write_bytes(data[0])
    (folder / "truncated.dcm").write_bytes(data[1][:180])
    (folder / "fake.dcm").write_text("I am a text file\n" * 30)
    (folder / "empty.dcm").write_bytes(b"")
    # Root can read any file despite chmod; /proc/self/mem cannot be read at offset 0 (EIO), truly.
    (folder / "unreadable.dcm").symlink_to("/proc/self/mem")
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 1
    assert "sent 1" in result.stdout and "not DICOM 2" in result.stdout and "failed 2" in result.stdout
    shown = failures(workdir)
    assert "truncated.dcm: " in shown
    assert "unreadable.dcm: cannot read (Input/output error)" in shown
    assert client_a.statistics()["CountInstances"] == 1
    # logs carry no file names by default (they may be patient IDs); the ledger does
    assert "truncated.dcm" not in result.stderr and "unreadable.dcm" not in result.stderr
    assert "file #" in result.stderr


def test_folder_vanishing_mid_run(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    data = instances()
    for n, payload in enumerate(data):
        folder = workdir / "in" / f"p{n // 6}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{n}.dcm").write_bytes(payload)
    planned = run_cli("upload", "in", "--to", "a", "--plan-only", cwd=workdir)
    assert planned.returncode == 0, planned.stderr
    shutil.rmtree(workdir / "in" / "p1")  # after listing, before sending
    result = run_cli("resume", "last", cwd=workdir)
    assert result.returncode == 1
    assert client_a.statistics()["CountInstances"] == 6
    assert failures(workdir).count("file vanished before upload") == 6


def test_join_csv_writes_pseudonyms_and_refuses_unknown_patients(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = instances()
    folder = workdir / "in"
    folder.mkdir()
    for n, payload in enumerate(data):
        (folder / f"{n}.dcm").write_bytes(payload)
    first, second = patient_id(SHAPE, 0), patient_id(SHAPE, 1)
    (workdir / "pseudonyms.csv").write_text(f"key,PatientID,PatientName\n{first},ANON-001,Anon^One\n")
    result = run_cli("upload", "in", "--to", "a", "--csv", "pseudonyms.csv", "--csv-key", "key", cwd=workdir)
    assert result.returncode == 1
    assert "sent 6" in result.stdout and "failed 6" in result.stdout
    patients = [client_a.resource("patients", p)["MainDicomTags"] for p in client_a.ids("patients")]
    assert patients == [{"PatientID": "ANON-001", "PatientName": "Anon^One"}] or (
        len(patients) == 1 and patients[0]["PatientID"] == "ANON-001"
    )
    stored = dcmread(io.BytesIO(client_a.instance_file(client_a.ids("instances")[0])))
    assert stored.PatientName == "Anon^One"
    assert "no row for its key in pseudonyms.csv" in failures(workdir)
    assert second not in result.stdout + result.stderr


def test_join_csv_with_unknown_column_is_a_usage_error(workdir: Path, config_file: Path) -> None:
    (workdir / "in").mkdir()
    (workdir / "j.csv").write_text("key,PatientNmae\nA,B\n")
    result = run_cli("upload", "in", "--to", "a", "--csv", "j.csv", "--csv-key", "key", cwd=workdir)
    assert result.returncode == 2
    assert "PatientNmae are not DICOM keywords" in result.stderr


def test_label_needs_orthanc_1_12(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    (workdir / "in").mkdir()
    (workdir / "in" / "x.dcm").write_bytes(instances()[0])
    result = run_cli("upload", "in", "--to", "a", "--label", "research", cwd=workdir)
    assert result.returncode == 2
    assert "which has no labels (1.12 or newer)" in result.stderr
    assert client_a.statistics()["CountInstances"] == 0


def test_offline_id_skip_sends_nothing_the_server_has(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = instances()
    (workdir / "in").mkdir()
    for n, payload in enumerate(data):
        (workdir / "in" / f"{n}.dcm").write_bytes(payload)
    client_a.upload(data[0])
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert "sent 11, already there 1" in result.stdout
    ledger = Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}")
    run = ledger.runs()[0]
    skipped = ledger.items(run.id, status="skipped")
    assert [item.result["id"] for item in skipped] == [read_uids(data[0]).instance_id]


@pytest.mark.timeout(240)
def test_orthanc_crash_mid_upload_loses_nothing(
    workdir: Path, config_file: Path, orthanc_a: LocalOrthanc, client_a: Orthanc
) -> None:
    shape = Shape(patients=4, series=3, instances=50, pixels=32, seed=23)
    folder = workdir / "in"
    folder.mkdir()
    for n, payload in enumerate(instances(shape)):
        (folder / f"{n}.dcm").write_bytes(payload)
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")} | {"PACSFLOW_RETRIES": "10"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pacsflow", "upload", "in", "--to", "a", "--workers", "2"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while client_a.statistics()["CountInstances"] < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    orthanc_a.kill()
    time.sleep(4)
    orthanc_a.start()
    out, err = process.communicate(timeout=200)
    assert process.returncode == 0, out + err
    assert "retry in" in err
    assert "sent 600" in out or "failed 0" in out
    with Orthanc(orthanc_a.server_config()) as client:
        assert client.statistics()["CountInstances"] == 600


def test_failed_items_are_listed_by_the_ledger(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    (workdir / "in").mkdir()
    (workdir / "in" / "bad.dcm").write_bytes(instances()[0][:200])
    run_cli("upload", "in", "--to", "a", cwd=workdir)
    ledger = Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}")
    (failed,) = ledger.items(ledger.runs()[0].id, status=FAILED)
    assert failed.key.endswith("bad.dcm") and failed.attempts == 1


def test_rerun_settles_unchanged_files_without_opening_them(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = instances()
    (workdir / "in").mkdir()
    for n, payload in enumerate(data):
        (workdir / "in" / f"{n}.dcm").write_bytes(payload)
    assert run_cli("upload", "in", "--to", "a", cwd=workdir).returncode == 0
    client_a.delete_resource("instances", read_uids(data[0]).instance_id)  # gone from the server
    touched = workdir / "in" / "1.dcm"
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))  # changed on disk (by its time)
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "sent 1, already there 11" in result.stdout
    ledger = Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}")
    items = {Path(item.key).name: item for item in ledger.items(ledger.runs()[0].id)}
    assert items["0.dcm"].status == "done"  # re-sent: the server had lost it
    assert items["1.dcm"].attempts == 1 and items["1.dcm"].last_error == "already on server"  # read again
    settled = [name for name, item in items.items() if item.attempts == 0]
    assert sorted(settled) == sorted(f"{n}.dcm" for n in range(2, 12))  # never opened
    assert client_a.statistics()["CountInstances"] == 12


def test_file_names_that_are_not_utf8(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    folder = workdir / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9-\xff.dcm")  # Latin-1 bytes on disk: not valid UTF-8
    (folder / name).write_bytes(instances()[0])
    (folder / os.fsdecode(b"broken-\xe9.dcm")).write_bytes(instances()[1][:150])
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 1, result.stderr  # the broken one fails; nothing crashes
    assert "sent 1" in result.stdout
    assert client_a.statistics()["CountInstances"] == 1
    assert "broken-\\udce9.dcm: rejected by the server" in failures(workdir)  # escaped, not lost
    again = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert "already there 1" in again.stdout
