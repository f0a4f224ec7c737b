"""The ledger: idempotent planning, exclusive claims, phases, leases, dead workers, retries."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pacsflow.errors import ConfigError
from pacsflow.ledger import DONE, FAILED, PENDING, RUNNING, Ledger, PlannedItem


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


def planned(n: int, phase: int = 0) -> list[PlannedItem]:
    return [PlannedItem("thing", f"k{phase}-{i}", {"i": i}, phase) for i in range(n)]


def test_ledger_file_is_private(tmp_path: Path) -> None:
    Ledger(f"sqlite:///{tmp_path / 'sub' / 'l.db'}")
    assert (tmp_path / "sub" / "l.db").stat().st_mode & 0o777 == 0o600


def test_planning_twice_adds_nothing(ledger: Ledger) -> None:
    run = ledger.create_run("test", {"x": 1})
    assert ledger.add_items(run, planned(10)) == 10
    assert ledger.add_items(run, planned(10)) == 0
    assert ledger.run(run).counts == {PENDING: 10}


def test_claims_are_exclusive_and_ordered(ledger: Ledger) -> None:
    run = ledger.create_run("test", {})
    ledger.add_items(run, planned(5))
    first = ledger.claim(run, "w1", 3, 60)
    second = ledger.claim(run, "w2", 3, 60)
    assert [i.key for i in first] == ["k0-0", "k0-1", "k0-2"]
    assert [i.key for i in second] == ["k0-3", "k0-4"]
    assert ledger.claim(run, "w3", 3, 60) == []
    assert all(item.attempts == 1 for item in first + second)


def test_later_phase_waits_for_earlier_phase(ledger: Ledger) -> None:
    run = ledger.create_run("test", {})
    ledger.add_items(run, planned(1, phase=0) + planned(2, phase=1))
    (item,) = ledger.claim(run, "w", 10, 60)
    assert item.phase == 0
    assert ledger.claim(run, "w", 10, 60) == []  # phase 1 must wait while phase 0 runs
    ledger.complete(item, "w", children=[PlannedItem("child", "c", {}, phase=1)])
    assert sorted(i.key for i in ledger.claim(run, "w", 10, 60)) == ["c", "k1-0", "k1-1"]


def keys(claimed: list) -> list[str]:
    return sorted(item.key for item in claimed)


def scoped_run(ledger: Ledger) -> str:
    """Two patients, each: list (phase 0), two files (phase 1), close (phase 2); and one unscoped
    report (phase 3) that waits for everything."""
    run = ledger.create_run("test", {})
    items = [PlannedItem("report", "report", {}, 3)]
    for patient in ("a", "b"):
        items += [PlannedItem("list", f"{patient}-list", {}, 0, scope=patient)]
        items += [PlannedItem("file", f"{patient}-f{n}", {}, 1, scope=patient) for n in (1, 2)]
        items += [PlannedItem("close", f"{patient}-close", {}, 2, scope=patient)]
    ledger.add_items(run, items)
    return run


def test_a_scope_goes_on_to_its_next_phase_while_another_is_still_at_its_first(ledger: Ledger) -> None:
    run = scoped_run(ledger)
    first = ledger.claim(run, "w", 1, 60)
    assert keys(first) == ["a-list"]
    ledger.complete(first[0], "w")
    # patient b is still listing (not even claimed): patient a's files go ahead all the same
    assert keys(ledger.claim(run, "w", 10, 60)) == ["a-f1", "a-f2", "b-list"]
    assert ledger.claim(run, "w", 10, 60) == []  # a-close waits for a's files; b's files for b-list
    for item in ledger.items(run, "running"):
        if item.key != "b-list":
            ledger.complete(item, "w")
    assert keys(ledger.claim(run, "w", 10, 60)) == ["a-close"]  # a's ZIP while b is still listing
    for item in ledger.items(run, "running"):
        ledger.complete(item, "w")
    assert keys(ledger.claim(run, "w", 10, 60)) == ["b-f1", "b-f2"]
    for item in ledger.items(run, "running"):
        ledger.complete(item, "w")
    assert keys(ledger.claim(run, "w", 10, 60)) == ["b-close"]  # the unscoped report still waits
    assert ledger.claim(run, "w", 10, 60) == []
    (closing,) = ledger.items(run, "running")
    ledger.complete(closing, "w")
    assert keys(ledger.claim(run, "w", 10, 60)) == ["report"]


def test_a_started_scope_goes_before_the_next_one_is_started(ledger: Ledger) -> None:
    """The assembly line retrieve needs: patient a's studies (made after patient b was planned, so
    with larger ids) are worked before patient b is even looked up, when workers are scarce."""
    run = ledger.create_run("test", {})
    ledger.add_items(run, [PlannedItem("patient", p, {}, 0, scope=p) for p in "ab"])
    (first,) = ledger.claim(run, "w", 1, 60)
    assert first.key == "a"
    studies = [PlannedItem("study", f"a-s{n}", {}, 1, scope="a") for n in (1, 2)]
    ledger.complete(first, "w", children=studies)
    assert [item.key for item in ledger.claim(run, "w", 2, 60)] == ["a-s1", "a-s2"]
    assert [item.key for item in ledger.claim(run, "w", 2, 60)] == ["b"]  # idle workers start the next


def test_an_unscoped_item_of_an_earlier_phase_holds_every_scope_back(ledger: Ledger) -> None:
    run = ledger.create_run("test", {})
    ledger.add_items(
        run,
        [PlannedItem("plan", "plan", {}, 0), PlannedItem("file", "a-f1", {}, 1, scope="a")],
    )
    (plan,) = ledger.claim(run, "w", 10, 60)
    assert plan.key == "plan" and ledger.claim(run, "w", 10, 60) == []
    ledger.complete(plan, "w")
    assert keys(ledger.claim(run, "w", 10, 60)) == ["a-f1"]


def test_a_scoped_item_of_a_dead_worker_is_taken_over(ledger: Ledger) -> None:
    run = ledger.create_run("test", {})
    ledger.add_items(run, [PlannedItem("x", "x", {}, 0, scope="s"), PlannedItem("y", "y", {}, 5, scope="t")])
    assert keys(ledger.claim(run, "dead", 10, 0.01)) == ["x", "y"]
    time.sleep(0.05)
    ledger._stale_checked.clear()  # looked for every few seconds: now
    assert keys(ledger.claim(run, "alive", 10, 60)) == ["x", "y"]


def test_complete_only_by_the_holder(ledger: Ledger) -> None:
    run = ledger.create_run("test", {})
    ledger.add_items(run, planned(1))
    (item,) = ledger.claim(run, "w1", 1, 60)
    assert not ledger.complete(item, "intruder")
    assert ledger.complete(item, "w1", nbytes=42)
    assert ledger.run(run).counts == {DONE: 1} and ledger.run(run).bytes == 42


def test_expired_lease_is_taken_over(ledger: Ledger) -> None:
    run = ledger.create_run("test", {})
    ledger.add_items(run, planned(1))
    (item,) = ledger.claim(run, "w1", 1, lease_seconds=0.01)
    time.sleep(0.05)
    (again,) = ledger.claim(run, "w2", 1, 60)
    assert again.id == item.id and again.attempts == 2
    assert not ledger.complete(item, "w1")  # the old holder lost it
    assert ledger.complete(again, "w2")


def test_items_of_a_dead_process_are_reclaimed(ledger: Ledger) -> None:
    run = ledger.create_run("test", {})
    ledger.add_items(run, planned(2))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead_worker = f"{socket.gethostname()}:{child.pid}:abc"
    ledger.claim(run, dead_worker, 1, 3600)
    ledger.claim(run, f"{socket.gethostname()}:1:live", 1, 3600)  # pid 1 is alive
    assert ledger.reclaim_dead(run) == 1
    assert ledger.run(run).counts == {PENDING: 1, RUNNING: 1}


def test_fail_with_retry_then_for_good(ledger: Ledger) -> None:
    run = ledger.create_run("test", {})
    ledger.add_items(run, planned(1))
    (item,) = ledger.claim(run, "w", 1, 60)
    ledger.fail(item, "w", "flaky", retry_at=time.time() + 3600)
    assert ledger.claim(run, "w", 1, 60) == []  # not before its retry time
    assert ledger.next_retry_at(run) > time.time()
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE items SET not_before = 0")
    (item,) = ledger.claim(run, "w", 1, 60)
    ledger.fail(item, "w", "broken for good")
    assert ledger.run(run).counts == {FAILED: 1}
    assert ledger.items(run, status=FAILED)[0].last_error == "broken for good"
    assert ledger.retry_failed(run) == 1
    assert ledger.run(run).counts == {PENDING: 1}


def test_run_lookup_by_prefix_and_last(ledger: Ledger) -> None:
    first = ledger.create_run("a", {}, run_id="20260101-000000-aaaa")
    second = ledger.create_run("b", {}, run_id="20260101-000000-bbbb")
    assert ledger.run("20260101-000000-a").id == first
    assert ledger.run("last").id in (first, second)
    with pytest.raises(ConfigError, match="ambiguous"):
        ledger.run("20260101")
    with pytest.raises(ConfigError, match="no run"):
        ledger.run("zzz")


def test_bad_ledger_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Ledger("not a url")
    with pytest.raises(ConfigError, match="unsupported"):
        Ledger("mysql://x/y")
