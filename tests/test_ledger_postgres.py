"""The shared ledger on a real PostgreSQL: row-locked claims never give one item to two workers."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from pacsflow.config import Settings
from pacsflow.engine import Engine
from pacsflow.ledger import DONE, Ledger, PlannedItem
from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, instance_bytes
from tests.conftest import PACSFLOW, wait_for
from tests.test_engine import Scripted


def test_concurrent_claims_never_overlap(postgres_url: str) -> None:
    ledger = Ledger(postgres_url)
    run = ledger.create_run("test", {}, run_id=f"pg-{uuid.uuid4().hex[:8]}")
    ledger.add_items(run, [PlannedItem("thing", f"k{i}") for i in range(400)])
    taken: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            got = ledger.claim(run, name, 7, 60)
            if not got:
                return
            with lock:
                taken.extend(item.id for item in got)
            for item in got:
                ledger.complete(item, name)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 400 and len(set(taken)) == 400
    assert ledger.run(run).counts == {DONE: 400}


def test_two_engines_share_a_run_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    Scripted.calls = Counter()
    settings = Settings(ledger=postgres_url, workers=3)
    keys = [f"ok-{i}" for i in range(300)]
    planned = Engine(Ledger(postgres_url), settings).start(Scripted(settings, {"keys": keys}), plan_only=True)
    results = []

    def join() -> None:
        results.append(Engine(Ledger(postgres_url), settings).resume(planned.run_id))

    threads = [threading.Thread(target=join) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    items = Ledger(postgres_url).items(planned.run_id)
    assert all(item.status == DONE and item.attempts == 1 for item in items)
    assert set(Scripted.calls.values()) == {1} and len(Scripted.calls) == 300
    assert len({item.worker for item in items}) == 2


def test_a_machine_with_a_fast_clock_cannot_take_a_leased_item(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(postgres_url)
    run = ledger.create_run("test", {}, run_id=f"pg-{uuid.uuid4().hex[:8]}")
    ledger.add_items(run, [PlannedItem("thing", f"k{i}") for i in range(5)])
    held = ledger.claim(run, "honest", 5, lease_seconds=60)
    assert len(held) == 5
    skewed = Ledger(postgres_url)  # another machine whose clock runs ten minutes ahead
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 600)
    assert skewed.claim(run, "skewed", 5, lease_seconds=60) == []
    monkeypatch.undo()
    assert {item.worker for item in ledger.items(run)} == {"honest"}


def _pacsflow(postgres_url: str, *args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    return subprocess.Popen(
        [*PACSFLOW, "--ledger", postgres_url, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_share_one_run_on_postgres(
    postgres_url: str, workdir: Path, orthanc_b: LocalOrthanc, client_b: Orthanc
) -> None:
    shape = ["--patients", "4", "--series", "2", "--instances", "40", "--pixels", "16"]
    planner = _pacsflow(postgres_url, "populate", "--to", orthanc_b.url, *shape, "--plan-only", cwd=workdir)
    out, err = planner.communicate(timeout=60)
    assert planner.returncode == 0, err
    run_id = out.split()[1].rstrip(":")
    both = [_pacsflow(postgres_url, "resume", run_id, "--workers", "2", cwd=workdir) for _ in range(2)]
    for process in both:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    items = Ledger(postgres_url).items(run_id)
    assert len(items) == 320 and {item.status for item in items} == {DONE}
    assert {item.attempts for item in items} == {1}  # no item was worked twice
    assert len({item.worker.split(":")[1] for item in items if item.worker}) == 2  # both processes worked
    assert client_b.statistics()["CountInstances"] == 320


def _connections_of(postgres_url: str, pid: int) -> int:
    import psycopg

    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (f"pacsflow:{pid}",)
        ).fetchone()
    return int(row[0])


@pytest.mark.timeout(240)
def test_a_long_follow_holds_one_small_connection_pool(
    postgres_url: str, workdir: Path, orthanc_a: LocalOrthanc, orthanc_b: LocalOrthanc, client_a: Orthanc
) -> None:
    follower = _pacsflow(
        postgres_url,
        "clone",
        "--from",
        orthanc_a.url_with_credentials,
        "--to",
        orthanc_b.url,
        "--follow",
        "--poll",
        "0.1",
        cwd=workdir,
    )
    shape = Shape(patients=1, series=1, instances=60, pixels=16, seed=44)
    counts = []
    with Orthanc(orthanc_b.server_config()) as destination:
        wait_for(lambda: "following" in (follower.stdout.readline() if follower.stdout else ""), "following")
        for n in range(60):  # each instance its own change, its own follower cycle
            client_a.upload(instance_bytes(shape, 0, 0, 0, n))
            wait_for(lambda n=n: len(destination.ids("instances")) == n + 1, "the copy", follower)
            if n % 10 == 9:
                counts.append(_connections_of(postgres_url, follower.pid))
    follower.send_signal(signal.SIGTERM)
    _, err = follower.communicate(timeout=30)
    assert follower.returncode == 130, err
    # one ledger for the whole process: its pool does not grow with the cycles (60 cycles held 25 before)
    assert max(counts) <= 3, counts


def test_scopes_order_phases_on_postgres_too(postgres_url: str) -> None:
    from tests.test_ledger import keys

    ledger = Ledger(postgres_url)
    run = ledger.create_run("test", {}, run_id=f"pg-{uuid.uuid4().hex[:8]}")
    ledger.add_items(
        run,
        [PlannedItem("list", f"{p}-list", {}, 0, scope=p) for p in "ab"]
        + [PlannedItem("file", f"{p}-f", {}, 1, scope=p) for p in "ab"]
        + [PlannedItem("report", "report", {}, 2)],
    )
    first = ledger.claim(run, "w", 1, 60)
    ledger.complete(first[0], "w")
    assert keys(ledger.claim(run, "w", 10, 60)) == sorted(
        [f"{first[0].key[0]}-f", "b-list" if first[0].key == "a-list" else "a-list"]
    )
