"""What a new user's inputs hold (issue #9, items 17-19): archives inside archives (bounded, zip-bomb
safe), FIFOs, sockets, devices and broken symlinks among the files, and the roster's errors CSV and
lock file after reruns."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path

from pacsflow.orthanc import Orthanc
from pacsflow.roster import Roster, roster_lock
from pacsflow.synthetic import Shape, instance_bytes, patient_id
from tests.conftest import cli, latest_run, run_cli


def dicoms(count: int, seed: int) -> list[bytes]:
    """COUNT distinct instances of one patient."""
    shape = Shape(patients=1, studies=1, series=1, instances=count, pixels=16, seed=seed)
    return [instance_bytes(shape, 0, 0, 0, i) for i in range(count)]


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def tar_gz_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def failures(workdir: Path) -> str:
    return cli("run", "show", "last", "--failed", cwd=workdir).stdout


def upload_roster(workdir: Path, batch_size: int = 1):
    return run_cli(
        "upload", "--roster", "Final.csv", "--root", "root", "--to", "a", "--batch-size", str(batch_size),
        cwd=workdir,
    )  # fmt: skip


# -- 17: archives inside archives ---------------------------------------------------------------------


def test_archives_inside_archives_are_opened_and_their_members_sent(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = dicoms(7, seed=91)
    folder = workdir / "in"
    folder.mkdir()
    # a ZIP of per-series ZIPs and TARs, as exports often come; a DICOMDIR is an index, not an image
    (folder / "export.zip").write_bytes(
        zip_bytes(
            {
                "series1.zip": zip_bytes({"a/1.dcm": data[0], "a/2.dcm": data[1]}),
                "series2.tar.gz": tar_gz_bytes({"b/1.dcm": data[2], "b/2.dcm": data[3]}),
                "DICOMDIR": b"\0" * 128 + b"DICM" + b"\0" * 64,
                "loose.dcm": data[4],
            }
        )
    )
    # and a ZIP in a compressed TAR, which is read in one pass within its own item
    in_tar = zip_bytes({"5": data[5], "6": data[6]})
    (folder / "night.tar.gz").write_bytes(tar_gz_bytes({"day/x.zip": in_tar}))
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = "(with 5 archives opened): DICOM 7, sent 7, already there 0, not DICOM 1, failed 0"
    assert summary in result.stdout
    assert client_a.statistics()["CountInstances"] == 7
    assert sorted(os.listdir(folder)) == ["export.zip", "night.tar.gz"]  # nothing extracted
    again = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "DICOM 7, sent 0, already there 7" in again.stdout  # each nested member checked, none sent


def test_archives_nested_too_deep_fail_and_what_is_within_bounds_is_sent(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = dicoms(4, seed=92)
    level4 = zip_bytes({"4.dcm": data[3]})
    level3 = zip_bytes({"3.dcm": data[2], "level4.zip": level4})
    level2 = zip_bytes({"2.dcm": data[1], "level3.zip": level3})
    (workdir / "in").mkdir()
    (workdir / "in" / "level1.zip").write_bytes(zip_bytes({"1.dcm": data[0], "level2.zip": level2}))
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr  # a failure, never a silent skip
    # what level2.zip sent before level4.zip failed is counted, not lost with the failure
    assert "DICOM 3, sent 3, already there 0, not DICOM 0, failed 1" in result.stdout
    shown = failures(workdir)
    assert "level1.zip!level2.zip: 1 of 4 members failed" in shown
    deepest = "level1.zip!level2.zip!level3.zip!level4.zip"
    assert f"{deepest}: archive nested 4 deep, more than 3; not opened" in shown
    # what is within the bounds is sent: levels 1 to 3
    assert client_a.statistics()["CountInstances"] == 3


def test_zip_bombs_are_refused_before_they_are_inflated(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    data = dicoms(2, seed=93)
    zeros = bytes(64 << 20)  # deflates about 1000 to 1: 64 MB from some 64 KB
    inner = zip_bytes({"bomb.dcm": zeros, "good.dcm": data[0]})
    (workdir / "in").mkdir()
    (workdir / "in" / "outer.zip").write_bytes(
        zip_bytes({"inner.zip": inner, "huge.dcm": zeros, "fine.dcm": data[1]})
    )
    assert (workdir / "in" / "outer.zip").stat().st_size < 1 << 20
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    shown = failures(workdir)
    # once both "not DICOM": a bomb in a nested archive, and one directly in the ZIP
    assert "outer.zip!inner.zip!bomb.dcm: expands" in shown
    assert "outer.zip!huge.dcm: expands" in shown
    assert shown.count("a zip bomb? not read") == 2
    assert client_a.statistics()["CountInstances"] == 2  # good.dcm and fine.dcm


def test_roster_row_with_a_broken_nested_archive_is_not_marked(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=2, series=1, instances=2, pixels=16, seed=94)
    p0, p1 = (patient_id(shape, p) for p in range(2))
    for p, uhid in enumerate((p0, p1)):
        (workdir / "root" / uhid).mkdir(parents=True)
        payloads = {f"{i}.dcm": instance_bytes(shape, p, 0, 0, i) for i in range(2)}
        if uhid == p0:  # an archive in the export that is cut short: its images are lost unless reported
            payloads["more.zip"] = zip_bytes({"x.dcm": instance_bytes(shape, p, 0, 0, 5)})[:60]
        (workdir / "root" / uhid / "export.zip").write_bytes(zip_bytes({"cd.zip": zip_bytes(payloads)}))
    (workdir / "Final.csv").write_text(f"UHID,Uploaded\n{p0},0\n{p1},0\n")
    result = upload_roster(workdir, batch_size=2)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "marked uploaded 1, errors 1" in result.stdout
    assert (workdir / "Final.csv").read_text() == f"UHID,Uploaded\n{p0},0\n{p1},1\n"
    errors = Roster.load(workdir / "Logs" / "UHID error" / "output.csv", ["UHID", "Error"])
    (row,) = errors.rows
    assert row[0] == p0
    assert "export.zip!cd.zip!more.zip: corrupt ZIP archive" in row[-1]
    assert client_a.statistics()["CountInstances"] == 4  # the readable members of both rows


# -- 18: FIFOs, sockets, devices, broken symlinks -------------------------------------------------------


def test_fifos_sockets_and_devices_are_skipped_never_opened(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    folder = workdir / "in"
    folder.mkdir()
    (folder / "image.dcm").write_bytes(dicoms(1, seed=95)[0])
    os.mkfifo(folder / "pipe")  # no writer ever comes: opening it would wait for ever
    os.mkfifo(workdir / "named-pipe")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(folder / "socket"))
    (folder / "zeros").symlink_to("/dev/zero")  # a device: reading it never ends
    # old code: blocked in open() on the FIFO until killed here
    result = run_cli("upload", "in", "named-pipe", "--to", "a", cwd=workdir, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DICOM 1, sent 1, already there 0, not DICOM 0, failed 0" in result.stdout
    assert "skipped, not regular files (never opened): FIFO 2, character device 1, socket 1" in result.stdout
    skipped = {Path(item.key).name: item.last_error for item in latest_run(workdir, "file", "skipped")}
    assert skipped == {
        "pipe": "not a regular file (FIFO)",
        "named-pipe": "not a regular file (FIFO)",
        "socket": "not a regular file (socket)",
        "zeros": "not a regular file (character device)",
    }
    assert client_a.statistics()["CountInstances"] == 1


def test_broken_symlink_is_reported_as_such(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    folder = workdir / "in"
    folder.mkdir()
    (folder / "image.dcm").write_bytes(dicoms(1, seed=96)[0])
    target = workdir / "unmounted-drive" / "scan.dcm"
    (folder / "scan.dcm").symlink_to(target)
    result = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sent 1" in result.stdout and "failed 1" in result.stdout
    shown = failures(workdir)
    assert f"scan.dcm: broken symlink (to {target})" in shown
    assert "vanished" not in shown
    # the log says what happened, but names no file (paths may name patients) without --log-phi
    assert "broken symlink" in result.stderr and "unmounted-drive" not in result.stderr


# -- 19: the roster's errors CSV and lock file ----------------------------------------------------------


def test_errors_csv_lists_what_is_wrong_now_and_no_lock_file_is_left(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=2, series=1, instances=2, pixels=16, seed=97)
    p0 = patient_id(shape, 0)
    (workdir / "root" / p0).mkdir(parents=True)
    for i in range(2):
        (workdir / "root" / p0 / f"{i}.dcm").write_bytes(instance_bytes(shape, 0, 0, 0, i))
    roster = workdir / "Final.csv"
    roster.write_text(f"UHID,Name,Uploaded\n{p0},First,0\n{p0},Again,0\nLATER,Third,0\n")
    errors = workdir / "Logs" / "UHID error" / "output.csv"
    lock = workdir / ".Final.csv.lock"

    def listed() -> dict[str, str]:
        table = Roster.load(errors, ["UHID", "Name", "Error"])
        return {table.cell(row, "Name"): table.cell(row, "Error") for row in table.rows}

    first = upload_roster(workdir)
    assert first.returncode == 1
    assert roster.read_text() == f"UHID,Name,Uploaded\n{p0},First,1\n{p0},Again,0\nLATER,Third,0\n"
    assert sorted(listed()) == ["Again", "Third"]
    assert listed()["Again"] == "duplicate UHID (first on line 2)"
    assert listed()["Third"].endswith("folder missing")
    assert not lock.exists()

    # the duplicate is the only row left for its folder, which is on the server: marked now, so it is
    # no longer an error; LATER's folder exists now but is empty: its reason is today's, listed once
    (workdir / "root" / "LATER").mkdir()
    second = upload_roster(workdir)
    assert second.returncode == 1
    assert roster.read_text() == f"UHID,Name,Uploaded\n{p0},First,1\n{p0},Again,1\nLATER,Third,0\n"
    assert list(listed()) == ["Third"]
    assert listed()["Third"].endswith("folder is empty")
    assert not lock.exists()

    (workdir / "root" / "LATER" / "0.dcm").write_bytes(instance_bytes(shape, 1, 0, 0, 0))
    third = upload_roster(workdir)
    assert third.returncode == 0, third.stdout + third.stderr
    assert roster.read_text() == f"UHID,Name,Uploaded\n{p0},First,1\n{p0},Again,1\nLATER,Third,1\n"
    assert listed() == {}  # nothing wrong any more; the header stays to say so
    assert errors.stat().st_mode & 0o777 == 0o600
    assert not lock.exists()
    assert sorted(os.listdir(workdir)) == sorted(
        [".pacsflow", "Final.csv", "Final.csv.bak", "Logs", "pacsflow.toml", "root"]
    )


def test_roster_lock_excludes_while_its_file_comes_and_goes(tmp_path: Path) -> None:
    """Holders remove the lock file when they let go; one who was waiting on the removed file must not
    go in beside one who created a new one."""
    roster = tmp_path / "Final.csv"
    inside: list[int] = []
    overlaps: list[int] = []
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for _ in range(40):
                with roster_lock(roster):
                    inside.append(worker)
                    if len(inside) > 1:
                        overlaps.append(worker)
                    time.sleep(0.0005)
                    inside.remove(worker)
        except BaseException as exc:  # reported by the test's own thread below
            errors.append(exc)

    # flock is per open file: threads that each open the lock file contend as processes do
    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert not overlaps
    assert os.listdir(tmp_path) == []  # no lock file left
