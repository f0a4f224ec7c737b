"""upload --roster (seed 000's Final.csv): shortlist, batches, verify-then-mark, errors CSV, format kept."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from pacsflow.config import Settings
from pacsflow.engine import EXIT_FAILED, EXIT_OK, Engine
from pacsflow.ledger import DONE, Ledger
from pacsflow.ops.roster import RosterUpload
from pacsflow.orthanc import Orthanc
from pacsflow.roster import Roster, sniff_format
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, instance_bytes, patient_id
from tests.conftest import PACSFLOW, USER, latest_run, run_cli, wait_for
from tests.test_upload import make_unlistable_folder, refuse_listing, tar_bytes


def make_folders(root: Path, shape: Shape) -> list[str]:
    """One folder per patient, named by PatientID (the roster's UHID)."""
    ids = []
    for p in range(shape.patients):
        uhid = patient_id(shape, p)
        ids.append(uhid)
        folder = root / uhid / "scan"
        folder.mkdir(parents=True)
        for se in range(shape.series):
            for i in range(shape.instances):
                (folder / f"{se}-{i}").write_bytes(instance_bytes(shape, p, 0, se, i))
    return ids


def test_roster_batches_mark_verified_rows_and_keep_the_file_format(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=4, series=2, instances=2, pixels=16, seed=31)
    p0, p1, p2, p3 = make_folders(workdir / "root", shape)
    (workdir / "root" / "EMPTY1").mkdir()
    (workdir / "root" / "NODICOM").mkdir()
    (workdir / "root" / "NODICOM" / "notes.txt").write_text("x")
    rows = [
        "UHID;Name;Uploaded;LLM;Extra",
        f"{p0};Müller;0;1;keep me",
        f"{p1};Brown;1;1;already uploaded",
        f"{p2};Núñez;0;1;",
        "MISSING9;Ghost;0;1;x",
        f"{p2};Again;0;1;duplicate",
        f"{p3};Later;0;0;LLM not ready",
        "EMPTY1;Empty;0;1;x",
        "NODICOM;Text;;1;empty status counts as 0",
    ]
    original = ("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8")
    roster = workdir / "Final.csv"
    roster.write_bytes(original)

    result = run_cli(
        "upload",
        "--roster",
        "Final.csv",
        "--root",
        "root",
        "--to",
        "a",
        "--batch-size",
        "2",
        "--where",
        "LLM=1",
        cwd=workdir,
    )
    assert result.returncode == 1, result.stderr  # some rows failed, and the run says which
    assert "rows 6 in 3 batches: marked uploaded 2, errors 4" in result.stdout

    expected = original.replace(f"{p0};Müller;0".encode(), f"{p0};Müller;1".encode()).replace(
        f"{p2};Núñez;0".encode(), f"{p2};Núñez;1".encode()
    )
    assert roster.read_bytes() == expected  # BOM, ';', CRLF, other rows and columns untouched
    assert (workdir / "Final.csv.bak").read_bytes() == original
    errors = workdir / "Logs" / "UHID error" / "output.csv"
    assert errors.stat().st_mode & 0o777 == 0o600
    table = Roster.load(errors, ["UHID", "Error"])
    reasons = {table.cell(row, "UHID"): table.cell(row, "Error") for row in table.rows}
    assert reasons["MISSING9"].endswith("folder missing")
    assert reasons[p2] == "duplicate UHID (first on line 4)"
    assert reasons["EMPTY1"].endswith("folder is empty")
    assert reasons["NODICOM"].endswith("no DICOM files in folder")
    assert client_a.statistics()["CountPatients"] == 2  # p0 and p2; p1 already marked, p3 not shortlisted

    changes = client_a.get_json("/changes", limit=1000)["Last"]
    rerun = run_cli(
        "upload",
        "--roster",
        "Final.csv",
        "--root",
        "root",
        "--to",
        "a",
        "--batch-size",
        "2",
        "--where",
        "LLM=1",
        cwd=workdir,
    )
    # the duplicate row's folder is now verified on the server, so it gets marked; nothing is sent again
    assert "sent 0" in rerun.stdout
    # nothing stored again: the only changes since are Orthanc's own "stable" events (StableAge is 2 s, so
    # they may fall during the rerun)
    since = client_a.get_json("/changes", since=changes, limit=1000)["Changes"]
    assert {change["ChangeType"] for change in since} <= {"StablePatient", "StableStudy", "StableSeries"}
    assert (workdir / "Final.csv.bak").read_bytes() == original  # the backup is kept once
    # the same errors are listed once, and the duplicate row, marked now, is no longer listed
    assert sorted(roster_errors(workdir)) == ["EMPTY1", "MISSING9", "NODICOM"]


def test_roster_with_commas_quotes_and_custom_columns(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=1, series=1, instances=2, pixels=16, seed=32)
    (p0,) = make_folders(workdir / "root", shape)
    text = f'MRN,Name,Done\n{p0},"Doe, John",no\n'
    upload = (
        "upload",
        "--roster",
        "list.csv",
        "--root",
        "root",
        "--to",
        "a",
        "--batch-size",
        "5",
        "--id-column",
        "MRN",
        "--status-column",
        "Done",
        "--errors",
        "errs.csv",
    )
    (workdir / "list.csv").write_text(text)
    result = run_cli(*upload, cwd=workdir)
    # 'no' is neither 0 nor empty: the row is not shortlisted
    assert "rows 0 in 0 batches" in result.stdout
    (workdir / "list.csv").write_text(f'MRN,Name,Done\n{p0},"Doe, John",0\n')
    result = run_cli(*upload, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert (workdir / "list.csv").read_text() == f'MRN,Name,Done\n{p0},"Doe, John",1\n'
    assert sniff_format((workdir / "list.csv").read_bytes()).delimiter == ","


def test_roster_missing_column_and_bad_options(workdir: Path, config_file: Path) -> None:
    (workdir / "root").mkdir()
    (workdir / "Final.csv").write_text("ID,Uploaded\nA,0\n")
    result = run_cli(
        "upload", "--roster", "Final.csv", "--root", "root", "--to", "a", "--batch-size", "2", cwd=workdir
    )
    assert result.returncode == 2
    assert "Final.csv: no column 'UHID' (columns: ID, Uploaded)" in result.stderr
    assert run_cli("upload", "--roster", "Final.csv", "--to", "a", cwd=workdir).returncode == 2
    where = run_cli(
        "upload",
        "--roster",
        "Final.csv",
        "--root",
        "root",
        "--to",
        "a",
        "--batch-size",
        "1",
        "--id-column",
        "ID",
        "--where",
        "LLM",
        cwd=workdir,
    )
    assert where.returncode == 2 and "write COLUMN=VALUE" in where.stderr


def test_roster_wrong_password_marks_nothing(workdir: Path, orthanc_a: LocalOrthanc) -> None:
    shape = Shape(patients=1, series=1, instances=1, pixels=16, seed=33)
    (p0,) = make_folders(workdir / "root", shape)
    (workdir / "Final.csv").write_text(f"UHID,Uploaded\n{p0},0\n")
    url = f"http://{USER}:wrong@127.0.0.1:{orthanc_a.http_port}"
    result = run_cli(
        "upload", "--roster", "Final.csv", "--root", "root", "--to", url, "--batch-size", "1", cwd=workdir
    )
    assert result.returncode == 2
    assert "refused user 'alice' with the password given (HTTP 401)" in result.stderr.strip().splitlines()[-1]
    assert (workdir / "Final.csv").read_text() == f"UHID,Uploaded\n{p0},0\n"
    assert not (workdir / "Final.csv.bak").exists()


def test_roster_killed_mid_run_resumes_batch_by_batch(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=12, series=2, instances=20, pixels=32, seed=34)
    ids = make_folders(workdir / "root", shape)
    (workdir / "Final.csv").write_text("UHID,Uploaded\n" + "".join(f"{uhid},0\n" for uhid in ids))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    process = subprocess.Popen(
        [
            *PACSFLOW,
            "upload",
            "--roster",
            "Final.csv",
            "--root",
            "root",
            "--to",
            "a",
            "--batch-size",
            "3",
            "--workers",
            "2",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(
        lambda: bool(latest_run(workdir, kind="commit", status=DONE)), "the first batch's commit", process
    )
    process.send_signal(signal.SIGKILL)
    process.wait()
    marked = Roster.load(workdir / "Final.csv", ["UHID"]).rows
    done_rows = [row for row in marked if row[1] == "1"]
    assert 3 <= len(done_rows) < 12 and len(done_rows) % 3 == 0  # whole batches, never half of one
    assert done_rows == marked[: len(done_rows)]  # batches in roster order

    resumed = run_cli("resume", "last", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert all(row[1] == "1" for row in Roster.load(workdir / "Final.csv", ["UHID"]).rows)
    assert client_a.statistics()["CountInstances"] == 12 * 2 * 20


def test_roster_edited_during_the_run_marks_rows_by_id(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=2, series=1, instances=2, pixels=16, seed=35)
    p0, p1 = make_folders(workdir / "root", shape)
    (workdir / "Final.csv").write_text(f"UHID,Uploaded\n{p0},0\n{p1},0\n")
    planned = run_cli(
        "upload",
        "--roster",
        "Final.csv",
        "--root",
        "root",
        "--to",
        "a",
        "--batch-size",
        "5",
        "--plan-only",
        cwd=workdir,
    )
    assert planned.returncode == 0, planned.stderr
    # staff add a row at the top and sort the rest while the run waits
    (workdir / "Final.csv").write_text(f"UHID,Uploaded\nNEW-1,0\n{p1},0\n{p0},0\n")
    result = run_cli("resume", "last", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert (workdir / "Final.csv").read_text() == f"UHID,Uploaded\nNEW-1,0\n{p1},1\n{p0},1\n"


def test_roster_retry_marks_rows_fixed_after_the_batch(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=1, series=1, instances=2, pixels=16, seed=36)
    (p0,) = make_folders(workdir / "root", shape)
    broken = workdir / "root" / p0 / "scan" / "0-1"
    good = broken.read_bytes()
    broken.write_bytes(good[:150])
    (workdir / "Final.csv").write_text(f"UHID,Uploaded\n{p0},0\n")
    first = run_cli(
        "upload", "--roster", "Final.csv", "--root", "root", "--to", "a", "--batch-size", "1", cwd=workdir
    )
    assert first.returncode == 1
    assert (workdir / "Final.csv").read_text() == f"UHID,Uploaded\n{p0},0\n"
    broken.write_bytes(good)
    retried = run_cli("retry", "last", cwd=workdir)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert (workdir / "Final.csv").read_text() == f"UHID,Uploaded\n{p0},1\n"
    assert client_a.statistics()["CountInstances"] == 2


def roster_errors(workdir: Path) -> dict[str, str]:
    table = Roster.load(workdir / "Logs" / "UHID error" / "output.csv", ["UHID", "Error"])
    return {table.cell(row, "UHID"): table.cell(row, "Error") for row in table.rows}


def test_roster_row_with_corrupt_archives_is_not_marked(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=2, series=1, instances=2, pixels=16, seed=37)
    p0, p1 = make_folders(workdir / "root", shape)
    payloads = [instance_bytes(shape, 0, 0, 0, i) for i in range(2)]
    # cut before its first TAR header: once counted as "not DICOM", and the row marked anyway
    (workdir / "root" / p0 / "scan" / "more.tar.gz").write_bytes(tar_bytes(payloads, "w:gz")[:40])
    (workdir / "root" / p0 / "scan" / "export.zip").write_bytes(b"PK but not really a zip\n" * 20)
    (workdir / "Final.csv").write_text(f"UHID,Uploaded\n{p0},0\n{p1},0\n")
    result = run_cli(
        "upload", "--roster", "Final.csv", "--root", "root", "--to", "a", "--batch-size", "2", cwd=workdir
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "marked uploaded 1, errors 1" in result.stdout
    assert (workdir / "Final.csv").read_text() == f"UHID,Uploaded\n{p0},0\n{p1},1\n"
    reason = roster_errors(workdir)[p0]
    assert "2 of 4 files failed" in reason
    assert "more.tar.gz: corrupt gzip file (" in reason
    assert "export.zip: corrupt ZIP archive (File is not a zip file)" in reason


def test_roster_row_with_a_folder_that_cannot_be_listed_is_not_marked(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=1, series=1, instances=2, pixels=16, seed=38)
    (p0,) = make_folders(workdir / "root", shape)
    make_unlistable_folder(workdir / "root" / p0, instance_bytes(shape, 0, 0, 0, 9))
    (workdir / "Final.csv").write_text(f"UHID,Uploaded\n{p0},0\n")
    result = run_cli(
        "upload", "--roster", "Final.csv", "--root", "root", "--to", "a", "--batch-size", "1", cwd=workdir
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "marked uploaded 0, errors 1" in result.stdout
    assert "folders that could not be listed: 1" in result.stdout
    assert (workdir / "Final.csv").read_text() == f"UHID,Uploaded\n{p0},0\n"
    reason = roster_errors(workdir)[p0]
    assert "1 of 3 files failed" in reason and "cannot list folder (File name too long)" in reason
    assert client_a.statistics()["CountInstances"] == 2  # what could be listed was sent


def test_roster_retry_lists_a_subfolder_that_could_not_be_listed(
    workdir: Path, settings: Settings, client_a: Orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = Shape(patients=1, series=2, instances=2, pixels=16, seed=39)
    (p0,) = make_folders(workdir / "root", shape)
    locked = workdir / "root" / p0 / "scan2"
    locked.mkdir()
    (locked / "x.dcm").write_bytes(instance_bytes(shape, 0, 0, 0, 7))
    (workdir / "Final.csv").write_text(f"UHID,Uploaded\n{p0},0\n")
    refuse_listing(monkeypatch, locked)
    params = {
        "to": "a",
        "roster": str(workdir / "Final.csv"),
        "root": str(workdir / "root"),
        "batch_size": 1,
        "errors": str(workdir / "errors.csv"),
    }
    ledger = Ledger(settings.ledger)
    first = Engine(ledger, settings).start(RosterUpload(settings, params))
    assert first.exit_code == EXIT_FAILED
    assert (workdir / "Final.csv").read_text() == f"UHID,Uploaded\n{p0},0\n"
    monkeypatch.undo()  # the operator fixes the permissions
    assert ledger.retry_failed(first.run_id) == 2  # the folder and the row's check
    assert Engine(ledger, settings).resume(first.run_id).exit_code == EXIT_OK
    assert (workdir / "Final.csv").read_text() == f"UHID,Uploaded\n{p0},1\n"
    assert client_a.statistics()["CountInstances"] == 5
