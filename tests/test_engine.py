"""The engine with a scripted operation: retries, failures, fatal stops, rate limits, windows, stop."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import pytest

from pacsflow.config import Settings
from pacsflow.engine import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Engine
from pacsflow.errors import BadInput, Unauthorized, Unreachable
from pacsflow.ledger import DONE, FAILED, PENDING, Item, Ledger, PlannedItem
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.pacing import RetryPolicy


@register
class Scripted(Operation):
    """Items named by what they should do: ok, flaky-N (fails N times), bad, fatal, slow."""

    name = "scripted-test"

    calls: ClassVar[Counter[str]] = Counter()
    lock = threading.Lock()

    def plan(self) -> Iterable[PlannedItem]:
        for key in self.params["keys"]:
            yield PlannedItem("thing", key)

    def do(self, item: Item) -> Outcome:
        with self.lock:
            self.calls[item.key] += 1
            count = self.calls[item.key]
        if item.key.startswith("flaky") and count <= int(item.key.split("-")[1]):
            raise Unreachable("server restarting")
        if item.key.startswith("bad"):
            raise BadInput("corrupt file")
        if item.key.startswith("fatal"):
            raise Unauthorized("wrong password")
        if item.key.startswith("slow"):
            time.sleep(0.2)
        if item.key.startswith("crash"):
            raise ZeroDivisionError("bug")
        return Outcome(nbytes=10)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Ledger, Settings]:
    Scripted.calls = Counter()
    settings = Settings(ledger=f"sqlite:///{tmp_path / 'l.db'}", workers=3)
    return Ledger(settings.ledger), settings


def fast_retry() -> RetryPolicy:
    return RetryPolicy(max_attempts=3, base=0.01, cap=0.05)


def test_all_items_done_once(setup: tuple[Ledger, Settings]) -> None:
    ledger, settings = setup
    keys = [f"ok-{i}" for i in range(50)]
    result = Engine(ledger, settings, retry=fast_retry()).start(Scripted(settings, {"keys": keys}))
    assert result.exit_code == EXIT_OK and result.status == "done"
    assert result.counts == {DONE: 50} and result.bytes == 500
    assert set(Scripted.calls.values()) == {1}


def test_transient_errors_are_retried_and_permanent_ones_recorded(setup: tuple[Ledger, Settings]) -> None:
    ledger, settings = setup
    keys = ["flaky-2", "flaky-5", "bad-1", "crash-1", *[f"ok-{i}" for i in range(10)]]
    result = Engine(ledger, settings, retry=fast_retry()).start(Scripted(settings, {"keys": keys}))
    assert result.exit_code == EXIT_FAILED and result.status == "failed"
    assert result.counts == {DONE: 11, FAILED: 3}
    assert Scripted.calls["flaky-2"] == 3  # two failures, then success
    assert Scripted.calls["flaky-5"] == 3  # gave up after max_attempts
    assert Scripted.calls["bad-1"] == 1  # permanent: never retried
    errors = {item.key: item.last_error for item in ledger.items(result.run_id, status=FAILED)}
    assert errors == {
        "flaky-5": "server restarting",
        "bad-1": "corrupt file",
        "crash-1": "unexpected ZeroDivisionError (bug)",
    }


def test_fatal_error_stops_the_run_and_keeps_items_pending(setup: tuple[Ledger, Settings]) -> None:
    ledger, settings = setup
    keys = ["fatal-1", *[f"slow-{i}" for i in range(30)]]
    result = Engine(ledger, settings, workers=1, retry=fast_retry()).start(Scripted(settings, {"keys": keys}))
    assert result.exit_code == EXIT_USAGE and result.status == "stopped"
    assert "wrong password" in str(result.error)
    counts = ledger.run(result.run_id).counts
    assert counts.get(FAILED, 0) == 0 and counts[PENDING] >= 29
    assert ledger.run(result.run_id).summary["error"] == "wrong password"


def test_closed_window_does_nothing_until_stopped(setup: tuple[Ledger, Settings]) -> None:
    ledger, settings = setup
    now = time.localtime()
    closed = f"{(now.tm_hour + 2) % 24:02d}:00-{(now.tm_hour + 3) % 24:02d}:00"
    engine = Engine(ledger, settings, window=closed)
    threading.Timer(1.0, engine.stop.set).start()
    result = engine.start(Scripted(settings, {"keys": ["ok-1", "ok-2"]}))
    assert result.status == "stopped" and result.exit_code == EXIT_INTERRUPTED
    assert result.counts == {PENDING: 2}
    assert not Scripted.calls


def test_graceful_stop_then_resume_finishes_everything(setup: tuple[Ledger, Settings]) -> None:
    ledger, settings = setup
    keys = [f"slow-{i}" for i in range(20)]
    engine = Engine(ledger, settings, workers=2)
    threading.Timer(0.5, engine.stop.set).start()
    first = engine.start(Scripted(settings, {"keys": keys}))
    assert first.status == "stopped"
    assert 0 < first.counts.get(DONE, 0) < 20
    assert "running" not in first.counts  # in-flight items finished or went back
    second = Engine(ledger, settings, workers=4).resume(first.run_id)
    assert second.status == "done" and second.counts == {DONE: 20}
    assert set(Scripted.calls.values()) == {1}


def test_plan_only_then_resume(setup: tuple[Ledger, Settings]) -> None:
    ledger, settings = setup
    planned = Engine(ledger, settings).start(Scripted(settings, {"keys": ["ok-1"]}), plan_only=True)
    assert planned.counts == {PENDING: 1} and not Scripted.calls
    assert Engine(ledger, settings).resume(planned.run_id).counts == {DONE: 1}
