"""What a new user reads (issue #9, items 13, 14, 16 and `--json` of 22): rates of this process's own
work, totals in what people count (roster rows, archive members as files), plurals, items named as
people know them and numbered within their run, killed runs shown as interrupted, forward and clone
saying what they did when stopped, and `runs`/`run show` as JSON for programs."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from pacsflow import Pacsflow
from pacsflow.cli.app import report
from pacsflow.events import ITEM_DONE, RUN_STARTED, Event
from pacsflow.ledger import DONE, FAILED, Ledger, new_worker_id
from pacsflow.orthanc import Orthanc
from pacsflow.progress import BarProgress, LogProgress
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, instance_bytes
from pacsflow.wording import plural, singular_of
from tests.conftest import PASSWORD, USER, cli, latest_run, run_cli, start_cli, wait_for
from tests.test_roster import make_folders


def ledger_of(workdir: Path) -> Ledger:
    return Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}")


def done_so_far(workdir: Path) -> int:
    run = latest_run(workdir)
    return run.counts.get(DONE, 0) if run is not None else 0


def closing_line(stdout: str, run_id: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(f"run {run_id}: "))


# -- plurals --------------------------------------------------------------------------------------


def test_counts_read_right_in_the_singular_and_the_plural() -> None:
    assert [plural(n, "study") for n in (0, 1, 2)] == ["0 studies", "1 study", "2 studies"]
    assert plural(1, "archive") == "1 archive" and plural(3, "archive") == "3 archives"
    assert plural(1, "patient") == "1 patient" and plural(2, "batch") == "2 batches"
    assert plural(2, "series") == "2 series" and plural(2, "copy") == "2 copies"
    assert [singular_of(word) for word in ("files", "items", "rows", "studies")] == [
        "file",
        "item",
        "row",
        "study",
    ]
    added = Event.items_added("r1", 7, "file", 1, number=2)
    assert added.describe() == "file #2: 1 more item planned"
    lost = Event.item_failed("r1", None, None, None, note="gone", reason="gone", count=1)
    assert lost.describe() == "run r1: 1 item failed: gone"


# -- item 13: rates from this process's work, totals from what is known ----------------------------


def test_resuming_a_finished_run_claims_no_rate(workdir: Path) -> None:
    (workdir / "pacsflow.toml").write_text("")  # the ledger goes beside it
    made = cli("populate", "--out", "data", "--instances", "6", "--pixels", "64", cwd=workdir)
    assert made.returncode == 0, made.stderr
    run = ledger_of(workdir).runs(1)[0]
    assert run.bytes > 0
    again = cli("resume", run.id, cwd=workdir)
    assert again.returncode == 0, again.stderr
    line = closing_line(again.stdout, run.id)
    # the run's bytes, none of them moved now: no rate (it was bytes of the whole run / a few ms)
    assert f"{run.bytes / 1e6:.1f} MB in all; 0.0 MB of it now in " in line
    assert "MB/s" not in line


def test_a_resumed_run_s_rate_and_bar_are_its_own_work(
    workdir: Path, config_file: Path, client_a: Orthanc, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli("populate", "--out", "data", "--instances", "30", "--pixels", "128", cwd=workdir).returncode == 0
    )
    stop = threading.Event()
    first_done: list[Event] = []

    def stop_after_ten(event: Event) -> None:
        first_done.append(event)
        if len(first_done) >= 10:
            stop.set()

    with Pacsflow(config=config_file) as pf:
        first = pf.start(
            "upload", {"paths": ["data"], "to": "a"}, stop=stop, handlers=[(ITEM_DONE, stop_after_ten)]
        )
        assert first.status == "stopped" and first.counts.get("pending")
        bar = BarProgress()
        pf.progress = lambda: bar
        resumed_done: list[Event] = []
        result = pf.resume(first.run_id, handlers=[(ITEM_DONE, resumed_done.append)])
    assert result.status == "done" and client_a.statistics()["CountInstances"] == 30
    own = sum(event.nbytes for event in resumed_done)
    assert 0 < own < result.bytes  # the whole run's bytes count what the first process sent too
    assert result.bytes_here == own == bar._bytes  # the closing line and the bar measure the same work
    capsys.readouterr()
    report(result)
    line = closing_line(capsys.readouterr().out, result.run_id)
    assert f"{result.bytes / 1e6:.1f} MB in all; {own / 1e6:.1f} MB of it now" in line
    assert f"({own / 1e6 / result.elapsed:.1f} MB/s)" in line


def roster_files(workdir: Path, rows: int) -> tuple[Path, list[str]]:
    """ROWS patient folders under root/ and a roster naming them, then one folder that is missing."""
    shape = Shape(patients=rows, series=1, instances=2, pixels=16, seed=91)
    ids = make_folders(workdir / "root", shape)
    roster = workdir / "Final.csv"
    roster.write_text("UHID,Uploaded\n" + "".join(f"{uhid},0\n" for uhid in [*ids, "MISSING7"]))
    return roster, ids


def test_roster_progress_counts_rows_from_the_start(
    workdir: Path,
    config_file: Path,
    client_a: Orthanc,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    roster, _ = roster_files(workdir, 3)
    started: list[Event] = []
    params = {"roster": str(roster), "root": str(workdir / "root"), "to": "a", "batch_size": 1}
    logs = Pacsflow(config=config_file, progress=lambda: LogProgress(interval=0.0))
    with caplog.at_level(logging.INFO, logger="pacsflow"), logs as pf:
        result = pf.start("roster-upload", params, handlers=[(RUN_STARTED, started.append)])
    # four rows in four batches: the total is known before the first batch's files are even listed
    assert (started[0].unit, started[0].unit_total, started[0].unit_finished) == ("rows", 4, 0)
    assert any(message.endswith(": 4 rows planned") for message in caplog.messages)
    lines = [message for message in caplog.messages if message.startswith("roster-upload ")]
    assert lines[-1].startswith(f"roster-upload {result.run_id}: 4/4 rows, 1 failed, ")
    assert all(re.search(r": [0-4]/4 rows, ", line) for line in lines)  # never a total of items
    assert result.unit_counts == {DONE: 3, FAILED: 1}
    report(result)
    assert "; rows: 3 done, 1 failed; " in closing_line(capsys.readouterr().out, result.run_id)


# -- item 14: counts and wording -------------------------------------------------------------------


def test_a_zip_is_counted_as_its_files_from_plan_to_summary(
    workdir: Path,
    config_file: Path,
    client_a: Orthanc,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shape = Shape(patients=1, series=1, instances=4, pixels=16, seed=92)
    with zipfile.ZipFile(workdir / "scans.zip", "w") as archive:
        for n in range(4):
            archive.writestr(f"s/{n}.dcm", instance_bytes(shape, 0, 0, 0, n))
        archive.writestr("s/notes.txt", "not an image")
    logs = Pacsflow(config=config_file, progress=lambda: LogProgress(interval=0.0))
    with caplog.at_level(logging.INFO, logger="pacsflow"), logs as pf:
        result = pf.start("upload", {"paths": ["scans.zip"], "to": "a"})
    assert any(message.endswith(": 1 file planned") for message in caplog.messages)  # not "1 files"
    lines = [message for message in caplog.messages if message.startswith("upload ")]
    assert lines[-1].startswith(f"upload {result.run_id}: 5/5 files, 0 failed, ")  # not 6/6 items
    assert result.unit_counts == {DONE: 4, "skipped": 1}
    report(result)
    out = capsys.readouterr().out
    assert "; files: 4 done, 1 skipped; " in closing_line(out, result.run_id)  # not "5 done" beside sent 4
    assert "sent 4" in out and "not DICOM 1" in out


def test_run_show_and_logs_name_items_by_their_number_in_the_run(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    assert (
        cli("populate", "--out", "first", "--instances", "12", "--pixels", "16", cwd=workdir).returncode == 0
    )
    shape = Shape(patients=1, series=1, instances=3, pixels=16, seed=93)
    (workdir / "in").mkdir()
    with zipfile.ZipFile(workdir / "in" / "evil.zip", "w") as archive:
        archive.writestr("../escape.dcm", instance_bytes(shape, 0, 0, 0, 0))
        archive.writestr("fine.dcm", instance_bytes(shape, 0, 0, 0, 1))
    (workdir / "in" / "plain.dcm").write_bytes(instance_bytes(shape, 0, 0, 0, 2))
    upload = run_cli("upload", "in", "--to", "a", cwd=workdir)
    assert upload.returncode == 1, upload.stderr
    run = ledger_of(workdir).runs(1)[0]
    assert run.total == 4  # two files, two members, after the populate run's twelve items
    logged = re.findall(r"(member #(\d+)) failed: unsafe member name", upload.stderr)
    assert len(logged) == 1 and 1 <= int(logged[0][1]) <= 4, upload.stderr
    shown = cli("run", "show", "last", "--failed", cwd=workdir).stdout
    failures = [line for line in shown.splitlines() if line.startswith("  ")]
    archive = workdir / "in" / "evil.zip"
    assert failures == [
        f"  {logged[0][0]} ../escape.dcm in {archive}: evil.zip!../escape.dcm: unsafe member name "
        "(absolute or '..'); not read"
    ]
    assert "m/" not in shown  # the ledger's key for a member is not for people
    retried = cli("retry", "last", cwd=workdir)
    assert f"run {run.id}: 1 failed item put back" in retried.stdout  # not "1 failed items"


def test_roster_rows_are_named_by_their_line(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    roster, _ = roster_files(workdir, 1)
    result = run_cli(
        "upload", "--roster", str(roster), "--root", "root", "--batch-size", "5", "--to", "a", cwd=workdir
    )
    assert result.returncode == 1, result.stderr
    assert "row at line 3 failed: folder missing" in result.stderr  # MISSING7 is on line 3 of Final.csv
    shown = cli("run", "show", "last", "--failed", cwd=workdir).stdout
    assert re.search(r"^  row at line 3 MISSING7: .*folder missing$", shown, re.MULTILINE), shown
    assert "row #" not in shown + result.stderr


def test_a_killed_run_shows_as_interrupted(workdir: Path, config_file: Path) -> None:
    process = start_cli(
        "populate",
        "--to",
        "a",
        "--patients",
        "8",
        "--instances",
        "60",
        "--pixels",
        "64",
        "--workers",
        "2",
        cwd=workdir,
        log="populate.log",
    )
    wait_for(lambda: done_so_far(workdir) >= 40, "some instances done", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = ledger_of(workdir).runs(1)[0]
    assert run.status == "running" and run.remaining  # what the ledger says: its owner never said otherwise
    listed = cli("runs", cwd=workdir).stdout
    assert re.search(rf"^{run.id} .* interrupted ", listed, re.MULTILINE), listed
    assert json.loads(cli("runs", "--json", cwd=workdir).stdout)[0]["status"] == "interrupted"
    assert "status     interrupted" in cli("run", "show", run.id, cwd=workdir).stdout


def test_a_run_killed_while_planning_shows_as_interrupted_and_a_live_one_does_not(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'ledger.db'}"
    code = f"from pacsflow.ledger import Ledger; print(Ledger({url!r}).create_run('upload', {{}}))"
    gone = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    ledger = Ledger(url)
    here = ledger.create_run("upload", {})  # planned by this process, which lives
    assert ledger.shown_status(ledger.run(gone)) == "interrupted"
    assert ledger.shown_status(ledger.run(here)) == "planning"
    ledger.set_status(here, "done")
    assert ledger.shown_status(ledger.run(here)) == "done"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_who_holds_a_run_s_items_tells_whether_it_is_interrupted(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'ledger.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    # a process that set the run running (its owner) and ended: the items' holders decide
    code = (
        "import sys, uuid; from pacsflow.ledger import Ledger, PlannedItem; ledger = Ledger(sys.argv[1]); "
        "run = ledger.create_run('t', {}, run_id=f'own-{uuid.uuid4().hex[:8]}'); "
        "ledger.add_items(run, [PlannedItem('thing', str(n)) for n in range(4)]); "
        "ledger.set_status(run, 'running'); print(run)"
    )
    owner_gone = [sys.executable, "-c", code, url]
    ledger = Ledger(url)
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    cases = [
        (f"{host}:{dead_pid.stdout.strip()}:x", 60.0, "interrupted"),  # this host, its process gone
        (new_worker_id(), 60.0, "running"),  # this process: alive
        ("elsewhere:4242:x", 60.0, "running"),  # another machine, lease running (on the ledger's clock)
        ("elsewhere:4242:x", -5.0, "interrupted"),  # another machine, silent past its lease
    ]
    for worker, lease, shown in cases:
        run = subprocess.run(owner_gone, capture_output=True, text=True, check=True).stdout.strip()
        assert ledger.claim(run, worker, 2, lease)
        assert ledger.shown_status(ledger.run(run)) == shown, worker


# -- item 16: forward and clone say what they did ---------------------------------------------------


def stopped_forwarder_log(workdir: Path, *args: str, until: Any = None, what: str = "") -> str:
    """`pacsflow forward --from a --to b ARGS` in the background: once it runs (and UNTIL holds), stop it
    as Ctrl-C would; what it printed."""
    forwarder = start_cli(
        "forward", "--from", "a", "--to", "b", *args, "--poll", "0.3", cwd=workdir, log="fw.log"
    )
    log = workdir / "fw.log"
    try:
        wait_for(lambda: "(Ctrl-C to stop)" in log.read_text(), "the forwarder to start", forwarder)
        if until is not None:
            wait_for(until, what, forwarder)
        forwarder.send_signal(signal.SIGTERM)
        assert forwarder.wait(timeout=30) == 130, log.read_text()
    finally:
        if forwarder.poll() is None:
            forwarder.kill()
    return log.read_text()


def test_forward_of_each_new_instance_says_so(workdir: Path, config_file: Path) -> None:
    text = stopped_forwarder_log(workdir, "--trigger", "new-instance")
    assert "forwarding each new instance of a to b (Ctrl-C to stop)" in text  # not "stable studies"
    assert "0 instances forwarded and deleted from the source (0 copies sent, 0 failed)" in text


def test_a_stopped_forward_says_what_it_forwarded_and_deleted(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    shape = Shape(patients=1, series=1, instances=2, pixels=16, seed=94)
    for n in range(2):
        client_a.upload(instance_bytes(shape, 0, 0, 0, n))
    text = stopped_forwarder_log(
        workdir,
        until=lambda: not client_a.ids("instances") and len(client_b.ids("instances")) == 2,
        what="the study forwarded and deleted",
    )
    assert "forwarding stable studies of a to b (Ctrl-C to stop)" in text
    assert (
        "1 study forwarded and deleted from the source (1 copy sent, 0 failed) since this command started; "
        "the same command continues it"
    ) in text


def test_clone_follow_counts_what_it_copied_when_stopped(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    shape = Shape(patients=1, series=1, instances=5, pixels=16, seed=95)
    client_a.upload(instance_bytes(shape, 0, 0, 0, 0))
    client_a.upload(instance_bytes(shape, 0, 0, 0, 1))
    follower = start_cli(
        "clone", "--from", "a", "--to", "b", "--follow", "--poll", "0.2", cwd=workdir, log="clone.log"
    )
    log = workdir / "clone.log"
    try:
        wait_for(lambda: len(client_b.ids("instances")) == 2, "the catch-up copy", follower)
        for n in range(2, 5):
            client_a.upload(instance_bytes(shape, 0, 0, 0, n))
        wait_for(lambda: len(client_b.ids("instances")) == 5, "the followed copies", follower)
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(timeout=30) == 130, log.read_text()
    finally:
        if follower.poll() is None:
            follower.kill()
    found = re.search(
        r"stopped following \(run \S+\): 5 instances copied \((\d+\.\d) MB\) since this", log.read_text()
    )
    assert found, log.read_text()


# -- item 22: runs and run show as JSON ------------------------------------------------------------

RUN_KEYS = {
    "id",
    "operation",
    "status",
    "created_at",
    "updated_at",
    "finished_at",
    "items",
    "counts",
    "bytes",
}


def test_runs_and_run_show_as_json(workdir: Path, orthanc_a: LocalOrthanc, client_a: Orthanc) -> None:
    shape = Shape(patients=1, series=1, instances=2, pixels=16, seed=96)
    (workdir / "in").mkdir()
    (workdir / "in" / "good.dcm").write_bytes(instance_bytes(shape, 0, 0, 0, 0))
    with zipfile.ZipFile(workdir / "in" / "evil.zip", "w") as archive:
        archive.writestr("../escape.dcm", instance_bytes(shape, 0, 0, 0, 1))
    server = f"http://{USER}:{PASSWORD}@127.0.0.1:{orthanc_a.http_port}"
    assert run_cli("upload", "in", "--to", server, cwd=workdir).returncode == 1
    assert (
        run_cli("populate", "--out", "data", "--instances", "2", "--pixels", "16", cwd=workdir).returncode
        == 0
    )

    listed = cli("runs", "--json", cwd=workdir)
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert [run["operation"] for run in runs] == ["populate", "upload"]
    assert all(set(run) == RUN_KEYS for run in runs)  # the same keys for every run
    assert all(set(run["counts"]) == {"done", "skipped", "failed", "pending", "running"} for run in runs)
    upload = runs[1]
    assert (upload["status"], upload["items"], upload["counts"]["failed"]) == ("failed", 3, 1)
    assert str(workdir) not in listed.stdout  # no path: nothing that may name a patient

    shown = cli("run", "show", upload["id"], "--failed", "--json", cwd=workdir)
    view = json.loads(shown.stdout)
    assert set(view) == RUN_KEYS | {"params", "elapsed", "error", "failed_items", "listed_items"}
    assert PASSWORD not in shown.stdout and view["params"]["to"] == f"http://127.0.0.1:{orthanc_a.http_port}"
    [failure] = view["failed_items"]
    assert set(failure) == {"number", "kind", "label", "name", "attempts", "error"}
    assert failure["kind"] == "member" and failure["label"] == f"member #{failure['number']}"
    assert failure["name"] == f"../escape.dcm in {workdir / 'in' / 'evil.zip'}"
    text = cli("run", "show", upload["id"], "--failed", cwd=workdir).stdout
    assert f"  {failure['label']} {failure['name']}: {failure['error']}" in text  # one view, two forms
    assert json.loads(cli("run", "show", upload["id"], "--json", cwd=workdir).stdout)["failed_items"] is None
