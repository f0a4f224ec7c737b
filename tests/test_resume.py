"""Killed runs resume without loss or duplicates; two processes share one run without doing an item twice."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

from pacsflow.ledger import DONE, Ledger
from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from tests.conftest import PACSFLOW, latest_run, run_cli, wait_for

N_PATIENTS, N_INSTANCES = 10, 60  # 600 instances
TOTAL = N_PATIENTS * N_INSTANCES
NO_RUN = SimpleNamespace(counts={})


def ledger_of(workdir: Path) -> Ledger:
    return Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}")


def populate_args(*extra: str) -> list[str]:
    return [
        "populate",
        "--to",
        "a",
        "--patients",
        str(N_PATIENTS),
        "--instances",
        str(N_INSTANCES),
        "--pixels",
        "64",
        "--seed",
        "11",
        *extra,
    ]


def new_instance_changes(client: Orthanc) -> int:
    count, since = 0, 0
    while True:
        page = client.get_json("/changes", since=since, limit=1000)
        count += sum(1 for change in page["Changes"] if change["ChangeType"] == "NewInstance")
        since = page["Last"]
        if page["Done"]:
            return count


def test_sigkill_half_way_then_resume_loses_and_repeats_nothing(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    process = subprocess.Popen(
        [*PACSFLOW, *populate_args("--workers", "2")],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(
        lambda: (latest_run(workdir) or NO_RUN).counts.get(DONE, 0) >= TOTAL // 4, "a quarter done", process
    )
    assert process.poll() is None, "the run finished before it could be killed; make it bigger"
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = ledger_of(workdir).runs()[0]
    assert TOTAL // 4 <= run.counts.get(DONE, 0) < TOTAL
    assert run.status == "running"

    resumed = run_cli("resume", run.id, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr

    run = ledger_of(workdir).run(run.id)
    assert run.status == "done"
    assert run.counts.get(DONE, 0) + run.counts.get("skipped", 0) == TOTAL
    assert client_a.statistics()["CountInstances"] == TOTAL
    assert new_instance_changes(client_a) == TOTAL  # no instance was stored twice
    items = ledger_of(workdir).items(run.id)
    redone = sum(item.attempts - 1 for item in items)
    assert redone <= 4 * 2  # only what the killed process held (4 per worker, 2 workers) ran again


def test_two_processes_share_one_run_and_do_no_item_twice(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    planned = run_cli(*populate_args("--plan-only"), cwd=workdir)
    assert planned.returncode == 0, planned.stderr
    run_id = ledger_of(workdir).runs()[0].id
    assert ledger_of(workdir).run(run_id).counts == {"pending": TOTAL}

    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    first = subprocess.Popen(
        [*PACSFLOW, "resume", run_id, "--workers", "2"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = subprocess.Popen(
        [*PACSFLOW, "worker", "--once", "--workers", "2", "--poll", "0.2"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err1 = first.communicate(timeout=120)
    _, err2 = second.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2

    items = ledger_of(workdir).items(run_id)
    assert len(items) == TOTAL
    assert all(item.status == DONE for item in items)
    assert all(item.attempts == 1 for item in items)  # claimed once, by one process
    pids = {item.worker.split(":")[1] for item in items if item.worker}
    assert len(pids) == 2, "both processes should have done part of the run"
    assert client_a.statistics()["CountInstances"] == TOTAL
    assert new_instance_changes(client_a) == TOTAL


def start_populate(workdir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [*PACSFLOW, *populate_args("--workers", "2", *extra)],
        cwd=workdir,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_done_at_least(workdir: Path, count: int, process: subprocess.Popen[str]) -> None:
    wait_for(lambda: (latest_run(workdir) or NO_RUN).counts.get(DONE, 0) >= count, f"{count} done", process)


def test_sigterm_finishes_in_flight_items_and_stops(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    process = start_populate(workdir)
    wait_until_done_at_least(workdir, 50, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "continue with: pacsflow resume" in err
    run = ledger_of(workdir).runs()[0]
    assert run.status == "stopped"
    assert "running" not in run.counts and run.counts.get("pending", 0) > 0
    assert client_a.statistics()["CountInstances"] == run.counts[DONE]  # ledger and server agree
    assert run_cli("resume", "last", cwd=workdir).returncode == 0
    assert client_a.statistics()["CountInstances"] == TOTAL


def test_orthanc_restart_mid_run_pauses_the_run_until_it_answers(
    workdir: Path, config_file: Path, orthanc_a: LocalOrthanc, client_a: Orthanc
) -> None:
    process = start_populate(workdir)  # default retries: the outage must not spend them
    wait_until_done_at_least(workdir, 100, process)
    orthanc_a.kill()  # crash, then down for longer than the client's own short retries
    time.sleep(4)
    orthanc_a.start()  # same ports, same data
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, out + err
    assert "waiting for a (down since" in err and "a answers again after" in err
    assert "retry in" not in err  # no item spent an attempt on the outage
    run = ledger_of(workdir).runs()[0]
    assert run.counts.get(DONE, 0) + run.counts.get("skipped", 0) == TOTAL
    assert client_a.statistics()["CountInstances"] == TOTAL
