"""CLI commands against real Orthancs: check, upload, transfer, download, runs, and their error paths."""

from __future__ import annotations

from pathlib import Path

from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc, free_port
from pacsflow.synthetic import Shape, instance_path, write_bad_files
from tests.conftest import PASSWORD, USER, cli, run_cli


def populate_folder(workdir: Path, instances: int = 3) -> Path:
    result = run_cli(
        "populate",
        "--out",
        "data",
        "--patients",
        "2",
        "--series",
        "2",
        "--instances",
        str(instances),
        "--pixels",
        "32",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    return workdir / "data"


def test_check_reports_each_target(workdir: Path, config_file: Path) -> None:
    result = cli("check", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    config, ledger, *lines = result.stdout.strip().splitlines()
    assert config == f"config   {config_file}: OK"
    path = workdir / ".pacsflow" / "ledger.db"
    assert ledger == f"ledger   sqlite:///{path}: OK, not created yet (the first run creates it)"
    assert not (workdir / ".pacsflow").exists()  # check only reads
    assert len(lines) == 3
    assert lines[0].startswith("server   a (http://127.0.0.1:") and "OK, Orthanc 1." in lines[0]
    assert f"login OK as {USER!r}" in lines[0] and "no login needed" in lines[1]
    assert lines[2].startswith("modality orthanc-a (ORTHANCA@127.0.0.1:") and "C-ECHO" in lines[2]
    assert PASSWORD not in result.stdout


def test_check_names_the_reason(workdir: Path, orthanc_a: LocalOrthanc) -> None:
    wrong = f"http://{USER}:wrong@127.0.0.1:{orthanc_a.http_port}"
    dead = f"http://127.0.0.1:{free_port()}"
    result = cli("check", wrong, dead, f"NOBODY@127.0.0.1:{free_port()}", cwd=workdir)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert "FAILED" in lines[0] and "refused user 'alice' with the password given (HTTP 401)" in lines[0]
    assert "FAILED" in lines[1] and "connection refused" in lines[1]
    assert "FAILED" in lines[2] and "cannot reach" in lines[2]
    assert "wrong" not in lines[0].split("FAILED")[0]  # the password is not echoed


def test_upload_folder_then_rerun_skips_everything(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = populate_folder(workdir)
    (data / "notes.txt").write_text("not an image")
    first = run_cli("upload", str(data), "--to", "a", cwd=workdir)
    assert first.returncode == 0, first.stderr
    assert "sent 12, already there 0, not DICOM 1, failed 0" in first.stdout
    assert client_a.statistics()["CountInstances"] == 12
    second = run_cli("upload", str(data), "--to", "a", cwd=workdir)
    assert second.returncode == 0
    assert "sent 0, already there 12, not DICOM 1" in second.stdout


def test_upload_bad_files_fail_with_reasons_and_rest_goes_on(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = populate_folder(workdir, instances=2)
    write_bad_files(data / "bad")
    result = run_cli("upload", str(data), "--to", "a", cwd=workdir)
    assert result.returncode == 1
    assert client_a.statistics()["CountInstances"] == 8
    assert "failed 2" in result.stdout and "not DICOM 2" in result.stdout  # empty + text file
    shown = run_cli("run", "show", "last", "--failed", cwd=workdir)
    assert "truncated_header.dcm" in shown.stdout and "truncated_pixels.dcm" in shown.stdout
    # an empty server holds nothing to skip, so no header is parsed here: Orthanc itself rejects both
    for name in ("truncated_header.dcm", "truncated_pixels.dcm"):
        assert f"{name}: rejected by the server as not valid DICOM" in shown.stdout


def test_upload_wrong_password_stops_at_once(
    workdir: Path, orthanc_a: LocalOrthanc, client_a: Orthanc
) -> None:
    data = populate_folder(workdir, instances=1)
    url = f"http://{USER}:nope@127.0.0.1:{orthanc_a.http_port}"
    result = cli("upload", str(data), "--to", url, cwd=workdir)
    assert result.returncode == 2
    assert "refused user 'alice' with the password given (HTTP 401)" in result.stderr.strip().splitlines()[-1]
    assert "nope" not in result.stderr + result.stdout
    assert client_a.statistics()["CountInstances"] == 0


def test_upload_unreachable_server_and_missing_path(workdir: Path) -> None:
    data = populate_folder(workdir, instances=1)
    result = cli("upload", str(data), "--to", f"http://127.0.0.1:{free_port()}", cwd=workdir)
    assert result.returncode == 2
    assert "connection refused" in result.stderr
    missing = cli("upload", str(workdir / "nope"), "--to", "http://127.0.0.1:1", cwd=workdir)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


def test_transfer_copies_only_what_is_missing_and_verifies(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    cli("populate", "--to", "a", "--patients", "2", "--series", "2", "--instances", "5", cwd=workdir)
    # put part of one series on B first: only the rest must travel
    for instance in client_a.ids("instances")[:3]:
        client_b.upload(client_a.instance_file(instance))
    result = run_cli("transfer", "--from", "a", "--to", "b", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "studies 2: verified 2, failed 0; instances copied 17" in result.stdout
    assert sorted(client_b.ids("instances")) == sorted(client_a.ids("instances"))
    again = run_cli("transfer", "--from", "a", "--to", "b", cwd=workdir)
    assert "instances copied 0" in again.stdout and "verified 2" in again.stdout


def test_transfer_of_a_study_that_is_not_there_stops_before_copying_anything(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    cli("populate", "--to", "a", "--patients", "2", "--instances", "2", cwd=workdir)
    study = client_a.ids("studies")[0]
    bogus = "00000000-00000000-00000000-00000000-00000000"
    result = run_cli("transfer", "--from", "a", "--to", "b", "--study", study, "--study", bogus, cwd=workdir)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("pacsflow: error: --study #2 matches no study on a (http://127.0.0.1:")
        and bogus not in last
    )
    assert client_b.ids("studies") == []
    assert cli("runs", cwd=workdir).stdout.count("transfer") == 0  # no run was made


def test_transfer_wrong_password_on_destination(
    workdir: Path, orthanc_a: LocalOrthanc, orthanc_b: LocalOrthanc
) -> None:
    wrong = f"http://{USER}:bad@127.0.0.1:{orthanc_a.http_port}"
    result = cli("transfer", "--from", orthanc_b.url, "--to", wrong, cwd=workdir)
    assert result.returncode == 2 and "refused user 'alice' with the password given" in result.stderr


def test_download_tree_matches_server(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    cli("populate", "--to", "a", "--patients", "2", "--series", "2", "--instances", "3", cwd=workdir)
    result = run_cli("download", "--from", "a", "--out", "dl", cwd=workdir)
    assert result.returncode == 0, result.stderr
    files = sorted((workdir / "dl").rglob("*.dcm"))
    uids = [
        client_a.resource("instances", one)["MainDicomTags"]["SOPInstanceUID"]
        for one in client_a.ids("instances")
    ]
    assert sorted(f.stem.split("_", 1)[1] for f in files) == sorted(uids)  # Number_SOPInstanceUID.dcm
    assert all(f.relative_to(workdir / "dl").parts[0].startswith("PF000-") for f in files)
    assert not list((workdir / "dl").rglob("*.part"))
    again = run_cli("download", "--from", "a", "--out", "dl", cwd=workdir)
    assert "12 skipped" in again.stdout


def test_runs_show_and_retry(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    shape = Shape(1, 1, 1, 2, pixels=32)
    cli("populate", "--out", "data", "--instances", "2", "--pixels", "32", cwd=workdir)
    broken = instance_path(workdir / "data", shape, 0, 0, 0, 1)
    good = broken.read_bytes()
    broken.write_bytes(good[:300])
    first = run_cli("upload", "data", "--to", "a", cwd=workdir)
    assert first.returncode == 1
    listing = run_cli("runs", cwd=workdir)
    assert "upload" in listing.stdout and "failed" in listing.stdout and "populate" in listing.stdout
    shown = run_cli("run", "show", "last", cwd=workdir)
    assert "operation  upload" in shown.stdout and PASSWORD not in shown.stdout
    broken.write_bytes(good)  # the operator repairs the file
    retried = run_cli("retry", "last", cwd=workdir)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "1 failed item put back" in retried.stdout
    assert client_a.statistics()["CountInstances"] == 2
