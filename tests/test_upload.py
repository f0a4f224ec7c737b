"""upload: folders, content sniffing, archives, bad input of every kind, CSV join, faults mid-run."""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import os
import shutil
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from pacsflow.config import Settings
from pacsflow.dicomfiles import read_uids
from pacsflow.engine import EXIT_FAILED, EXIT_OK, Engine
from pacsflow.ledger import FAILED, Ledger
from pacsflow.ops.upload import Upload
from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, instance_bytes, patient_id
from tests.conftest import cli, run_cli

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
    return cli("run", "show", "last", "--failed", cwd=workdir).stdout


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
    assert [(p["PatientID"], p["PatientName"]) for p in patients] == [("ANON-001", "Anon^One")]
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

    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}  # default retries
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
    assert "waiting for a (down since" in err and "a answers again after" in err
    assert "failed 0;" in out
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
    as_json = cli("run", "show", "last", "--failed", "--json", cwd=workdir)
    assert as_json.returncode == 0 and "broken-\\\\udce9.dcm" in as_json.stdout
    again = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert "already there 1" in again.stdout


def tar_bytes(payloads: list[bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for n, payload in enumerate(payloads):
            info = tarfile.TarInfo(f"dir/{n}.dcm")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def write_corrupt_archives(folder: Path, data: list[bytes]) -> dict[str, str]:
    """Archives that cannot be read, each named after what is wrong; returns name -> expected reason."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = tar_bytes(data[:3])
    with tarfile.open(fileobj=io.BytesIO(plain)) as listing:
        second_header = listing.getmembers()[1].offset
    files = {
        # the gzip header and a few bytes: not even the first TAR header can be unpacked
        "short.tar.gz": (tar_bytes(data[:3], "w:gz")[:40], "corrupt gzip file ("),
        "half.tar.bz2": (bz2.compress(plain)[: len(bz2.compress(plain)) // 2], "corrupt bzip2 file ("),
        "garbage.zip": (b"not a zip at all\n" * 40, "corrupt ZIP archive (File is not a zip file)"),
        # gzip's magic bytes and no telling name, cut short
        "scan0001": (gzip.compress(data[0])[:25], "corrupt gzip file ("),
        # tarfile stops quietly at a truncated header: the members after it would vanish unnoticed
        "cut.tar": (plain[: second_header + 100], "corrupt TAR archive (truncated or damaged after 1 member"),
        "cut.tar.gz": (
            gzip.compress(plain[: second_header + 100]),
            "corrupt compressed TAR archive (truncated or damaged after 1 member",
        ),
    }
    for name, (payload, _) in files.items():
        (folder / name).write_bytes(payload)
    return {name: reason for name, (_, reason) in files.items()}


def test_corrupt_and_truncated_archives_fail_with_their_reason(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = instances()
    folder = workdir / "in"
    reasons = write_corrupt_archives(folder, data[1:4])
    (folder / "good.dcm").write_bytes(data[0])
    (folder / "notes.txt.gz").write_bytes(gzip.compress(b"just text\n" * 10))  # whole, and not an archive
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DICOM 1, sent 1, already there 0, not DICOM 1, failed 6" in result.stdout
    shown = failures(workdir)
    for name, reason in reasons.items():
        assert f"{name}: {reason}" in shown
    # a compressed TAR is read in one pass: the member before the damage was sent, and stays
    assert set(client_a.ids("instances")) == {read_uids(data[0]).instance_id, read_uids(data[1]).instance_id}


def make_unlistable_folder(parent: Path, payload: bytes) -> Path:
    """A folder nested so deep that its path exceeds PATH_MAX: listing it fails (ENAMETOOLONG) even for
    root, as it does on real servers' deep exports; PAYLOAD lies at the bottom. Returns the top folder."""
    top = parent / "deep"
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(18):  # 18 x 255 bytes > 4096: built by relative steps, as no full path works
            name = f"{level:02d}" + "x" * 253
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open("lost.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, payload)
        os.close(out)
    finally:
        os.close(fd)
    return top


def test_folder_that_cannot_be_listed_is_a_failure(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = instances()
    (workdir / "in").mkdir()
    (workdir / "in" / "good.dcm").write_bytes(data[0])
    make_unlistable_folder(workdir / "in", data[1])
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sent 1, already there 0, not DICOM 0, failed 0" in result.stdout
    assert "folders that could not be listed: 1" in result.stdout
    ledger = Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}")
    (failed,) = ledger.items(ledger.runs()[0].id, status=FAILED)
    assert failed.kind == "folder" and failed.key.startswith(str(workdir / "in" / "deep" / "00xxx"))
    assert failed.last_error.endswith(": cannot list folder (File name too long)")
    assert "xxxxx" not in result.stderr  # the log names no folder


def test_join_csv_with_conflicting_rows_names_lines_not_the_key(workdir: Path, config_file: Path) -> None:
    (workdir / "in").mkdir()
    key = patient_id(SHAPE, 0)
    (workdir / "j.csv").write_text(f"key,PatientName\n{key},Anon^One\nOTHER,Anon^Two\n{key},Anon^Three\n")
    result = run_cli("upload", "in", "--to", "a", "--csv", "j.csv", "--csv-key", "key", cwd=workdir)
    assert result.returncode == 2
    assert "lines 2 and 4 have the same key (column key) with different values" in result.stderr
    assert key not in result.stderr + result.stdout


def refuse_listing(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Listing FOLDER fails with EACCES until monkeypatch.undo(): root may list any folder, so a
    permission fault that goes away again has to be made up."""
    real_scandir = os.scandir

    def scandir(path: str) -> Any:
        if os.fspath(path) == str(folder):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_retry_lists_a_folder_that_could_not_be_listed(
    workdir: Path, settings: Settings, client_a: Orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = instances()
    folder = workdir / "in"
    (folder / "locked").mkdir(parents=True)
    (folder / "open.dcm").write_bytes(data[0])
    (folder / "locked" / "inside.dcm").write_bytes(data[1])
    refuse_listing(monkeypatch, folder / "locked")
    ledger = Ledger(settings.ledger)
    first = Engine(ledger, settings).start(Upload(settings, {"paths": [str(folder)], "to": "a"}))
    assert first.exit_code == EXIT_FAILED
    (failed,) = ledger.items(first.run_id, status=FAILED)
    assert failed.kind == "folder" and failed.last_error == "locked: cannot list folder (Permission denied)"
    assert client_a.statistics()["CountInstances"] == 1
    monkeypatch.undo()  # the operator fixes the permissions
    assert ledger.retry_failed(first.run_id) == 1
    assert Engine(ledger, settings).resume(first.run_id).exit_code == EXIT_OK
    assert client_a.statistics()["CountInstances"] == 2
