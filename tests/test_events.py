"""Run and item events: what a run publishes, in what order, and subscribers that fail or must not leak."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pacsflow.config import Settings
from pacsflow.engine import EXIT_OK, Engine
from pacsflow.errors import Unreachable
from pacsflow.events import (
    ALL_EVENTS,
    ITEM_DONE,
    ITEM_EVENTS,
    ITEM_FAILED,
    ITEM_RETRY,
    ITEMS_ADDED,
    RUN_FINISHED,
    RUN_GOING_ON,
    RUN_OUTSIDE_WINDOW,
    RUN_STARTED,
    RUN_WAITING,
    Event,
    EventBus,
)
from pacsflow.ledger import DONE, FAILED, Item, Ledger, PlannedItem
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.outages import Outages
from pacsflow.progress import LogProgress
from tests.test_engine import Scripted, fast_retry
from tests.test_outages import OneRemote, Remote, TwoRemotes


@register
class Planner(Scripted):
    """Scripted, and items `parent-N` plan three `ok` children each (as an archive plans its members)."""

    name = "planner-test"

    def do(self, item: Item) -> Outcome:
        if item.key.startswith("parent"):
            children = [PlannedItem("thing", f"ok-{item.key}-{n}") for n in range(3)]
            return Outcome(nbytes=1, children=children)
        return super().do(item)


class Recorder:
    """A handler that keeps every event, and the threads item events came from."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.item_threads: set[int] = set()

    def __call__(self, event: Event) -> None:
        if event.type in ITEM_EVENTS:
            self.item_threads.add(threading.get_ident())
        self.events.append(event)

    def of(self, *types: str) -> list[Event]:
        return [event for event in self.events if event.type in types]

    def types(self) -> list[str]:
        return [event.type for event in self.events]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    Scripted.calls = Counter()
    return Settings(ledger=f"sqlite:///{tmp_path / 'l.db'}", workers=3)


@pytest.fixture
def remotes() -> dict[str, Remote]:
    TwoRemotes.remotes = {"x": Remote("x"), "y": Remote("y")}
    TwoRemotes.calls = Counter()
    TwoRemotes.finished_at = {}
    return TwoRemotes.remotes


def run(settings: Settings, keys: Iterable[str], op: type[Operation] = Scripted, **options: Any) -> Recorder:
    """Start a run of OP on KEYS with an engine given OPTIONS; every event it published."""
    recorder = Recorder()
    engine = Engine(Ledger(settings.ledger), settings, handlers=[(ALL_EVENTS, recorder)], **options)
    engine.start(op(settings, {"keys": list(keys)}))
    return recorder


def test_a_run_publishes_started_each_item_and_finished(settings: Settings) -> None:
    keys = ["bad-1", "flaky-1", *[f"ok-{n}" for n in range(10)]]
    recorder = run(settings, keys, retry=fast_retry())
    started, finished = recorder.events[0], recorder.events[-1]
    assert started.type == RUN_STARTED and started.operation == "scripted-test"
    assert (started.total, started.finished) == (12, 0)
    done = recorder.of(ITEM_DONE)
    assert sorted(str(event.key) for event in done) == sorted(keys[1:])
    assert {(event.status, event.nbytes, event.kind, event.count) for event in done} == {
        (DONE, 10, "thing", 1)
    }
    [failed] = recorder.of(ITEM_FAILED)
    assert (failed.key, failed.reason, failed.note, failed.attempts) == (
        "bad-1",
        "corrupt file",
        "corrupt file",
        1,
    )
    [retry] = recorder.of(ITEM_RETRY)
    assert (retry.key, retry.reason, retry.attempts) == ("flaky-1", "server restarting", 1)
    assert retry.retry_at is not None and retry.retry_at > started.time
    assert finished.type == RUN_FINISHED and finished.run_id == started.run_id
    assert (finished.status, dict(finished.counts), finished.nbytes) == ("failed", {DONE: 11, FAILED: 1}, 110)
    assert finished.elapsed > 0 and finished.error is None and not finished.gave_up
    assert {event.run_id for event in recorder.events} == {started.run_id}


def test_events_arrive_in_order_per_item_on_one_thread(settings: Settings) -> None:
    keys = ["parent-1", "parent-2", "flaky-2", "bad-1", *[f"ok-{n}" for n in range(30)]]
    started_on = threading.get_ident()
    recorder = run(settings, keys, op=Planner, retry=fast_retry())
    assert recorder.item_threads == {started_on}  # the dispatcher: handlers need no locks for item events
    assert recorder.types()[0] == RUN_STARTED and recorder.types()[-1] == RUN_FINISHED
    per_item: dict[int | None, list[str]] = defaultdict(list)
    for event in recorder.of(*ITEM_EVENTS):
        per_item[event.item_id].append(event.type)
    assert len(per_item) == len(keys) + 6  # each parent planned three children, and they were worked
    for types in per_item.values():
        *before, last = types
        assert last in (ITEM_DONE, ITEM_FAILED)
        assert set(before) <= {ITEM_RETRY, ITEMS_ADDED} and before.count(ITEMS_ADDED) <= 1
    added = recorder.of(ITEMS_ADDED)
    assert sorted(event.count for event in added) == [3, 3]
    parents = {event.item_id for event in recorder.of(ITEM_DONE) if str(event.key).startswith("parent")}
    assert {event.item_id for event in added} == parents
    assert per_item[added[0].item_id] == [ITEMS_ADDED, ITEM_DONE]
    assert recorder.of(RUN_FINISHED)[0].counts == {DONE: 39, FAILED: 1}


def test_a_handler_that_raises_is_logged_once_and_the_run_goes_on(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_event: Event) -> None:
        raise ValueError("a bug in a subscriber")

    recorder = Recorder()
    engine = Engine(Ledger(settings.ledger), settings, handlers=[(ITEM_DONE, broken), (ITEM_DONE, recorder)])
    result = engine.start(Scripted(settings, {"keys": [f"ok-{n}" for n in range(20)]}))
    assert result.exit_code == EXIT_OK and result.counts == {DONE: 20}
    assert len(recorder.events) == 20  # the handler after the broken one got every event
    failures = [record for record in caplog.records if "event handler" in record.getMessage()]
    assert len(failures) == 1 and "broken" in failures[0].getMessage() and failures[0].exc_info


def test_a_remote_down_publishes_waiting_then_going_on(tmp_path: Path, remotes: dict[str, Remote]) -> None:
    settings = Settings(ledger=f"sqlite:///{tmp_path / 'l.db'}", workers=2)
    threading.Timer(0.3, lambda: setattr(remotes["x"], "up", False)).start()
    threading.Timer(1.5, lambda: setattr(remotes["x"], "up", True)).start()
    recorder = run(settings, [f"x-{n}" for n in range(150)], op=OneRemote)
    pauses = recorder.of(RUN_WAITING, RUN_GOING_ON)
    assert [event.type for event in pauses] == [RUN_WAITING, RUN_GOING_ON]
    waiting, going_on = pauses
    assert waiting.remote == going_on.remote == "x" and waiting.since == going_on.since
    assert waiting.since is not None and waiting.since <= waiting.time
    assert waiting.text is not None and waiting.text.startswith("waiting for x (down since ")
    assert going_on.text is not None and going_on.text.startswith("x answers again after")
    types = recorder.types()
    assert types.index(RUN_STARTED) < types.index(RUN_WAITING) < types.index(RUN_GOING_ON)
    assert types[-1] == RUN_FINISHED and recorder.events[-1].counts == {DONE: 150}


def test_a_run_joining_an_outage_starts_with_waiting(tmp_path: Path, remotes: dict[str, Remote]) -> None:
    """A worker or follower shares one view of outages across its runs: a run that starts while a remote
    is down is told so first, and says what it waits for when it leaves."""
    settings = Settings(ledger=f"sqlite:///{tmp_path / 'l.db'}", workers=2)
    shared = Outages(60.0)
    remotes["x"].up = False
    assert shared.confirm(Unreachable("refused", remote="x", probe=remotes["x"].probe))
    recorder = run(settings, ["x-1", "x-2"], op=OneRemote, outages=shared, leave_when_waiting=True)
    assert recorder.types() == [RUN_WAITING, RUN_STARTED, RUN_FINISHED]
    finished = recorder.events[-1]
    assert finished.status == "running" and finished.text == recorder.events[0].text
    assert finished.text is not None and finished.text.startswith("waiting for x")


def test_outside_the_time_window_is_published(settings: Settings) -> None:
    now = time.localtime()
    closed = f"{(now.tm_hour + 2) % 24:02d}:00-{(now.tm_hour + 3) % 24:02d}:00"
    recorder = Recorder()
    engine = Engine(Ledger(settings.ledger), settings, window=closed, handlers=[(ALL_EVENTS, recorder)])
    threading.Timer(0.5, engine.stop.set).start()
    engine.start(Scripted(settings, {"keys": ["ok-1"]}))
    assert recorder.types() == [RUN_STARTED, RUN_OUTSIDE_WINDOW, RUN_FINISHED]
    outside = recorder.events[1]
    assert outside.until is not None and outside.until > time.time()
    assert outside.text is not None and outside.text.startswith(f"outside time window {closed}")
    assert recorder.events[-1].status == "stopped"


def test_log_lines_say_counts_and_waiting_and_no_item_key(
    tmp_path: Path, remotes: dict[str, Remote], caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(ledger=f"sqlite:///{tmp_path / 'l.db'}", workers=2)
    remotes["x"].up = False
    threading.Timer(1.5, lambda: setattr(remotes["x"], "up", True)).start()
    # keys as an upload's would be: a patient's folder
    keys = [key for n in range(30) for key in (f"x-PATIENT{n:04d}", f"y-PATIENT{n:04d}")]
    with caplog.at_level(logging.INFO, logger="pacsflow"):
        engine = Engine(Ledger(settings.ledger), settings, progress=LogProgress(interval=0.0))
        result = engine.start(TwoRemotes(settings, {"keys": keys}))
    assert result.exit_code == EXIT_OK
    label = f"two-remotes-test {result.run_id}: "
    lines = [message for message in caplog.messages if message.startswith(label)]
    assert any("; waiting for x (down since " in line for line in lines)  # y's items went on meanwhile
    assert lines[-1].startswith(f"{label}60/60 items, 0 failed, ") and "waiting" not in lines[-1]
    assert not [message for message in caplog.messages if "PATIENT" in message]


def test_describe_names_items_by_number_unless_log_phi() -> None:
    done = Event.item_done("r1", 42, "file", "/data/Smith^John/1.dcm", DONE, 10, None)
    failed = Event.item_failed(
        "r1", 43, "file", "/data/Smith^John/2.dcm", note="/data/Smith^John/2.dcm: corrupt", reason="corrupt"
    )
    assert str(done) == done.describe() == "file #42 done"
    assert failed.describe() == "file #43 failed: corrupt"
    assert "Smith" in done.describe(log_phi=True) and "Smith" in failed.describe(log_phi=True)
    finished = Event.run_finished(
        "r1", "stopped", {DONE: 1}, 10, 1.0, error="/data/Smith: wrong password", reason="wrong password"
    )
    assert "Smith" not in str(finished) and "wrong password" in str(finished)


def test_bus_subscribe_several_types_cancel_and_order() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    first = bus.subscribe([ITEM_DONE, ITEM_FAILED], lambda event: seen.append(("first", event.type)))
    bus.subscribe(ITEM_DONE, lambda event: seen.append(("second", event.type)))
    assert bus.wants(ITEM_DONE) and not bus.wants(RUN_STARTED)
    bus.publish(Event.item_done("r", 1, "thing", "k", DONE, 0, None))
    bus.publish(Event.item_failed("r", 2, "thing", "k", note="x", reason="x"))
    bus.publish(Event.run_started("r", "op", 1, 0))  # nobody listens: nothing happens
    assert seen == [("first", ITEM_DONE), ("second", ITEM_DONE), ("first", ITEM_FAILED)]
    first.cancel()
    seen.clear()
    bus.publish(Event.item_failed("r", 2, "thing", "k", note="x", reason="x"))
    bus.publish(Event.item_done("r", 1, "thing", "k", DONE, 0, None))
    assert seen == [("second", ITEM_DONE)] and not bus.wants(ITEM_FAILED)


def test_bus_publishes_from_many_threads_while_others_subscribe() -> None:
    bus = EventBus()
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def count(event: Event) -> None:
        with lock:
            counts[event.type] += 1

    bus.subscribe(ITEM_DONE, count)
    event = Event.item_done("r", 1, "thing", "k", DONE, 0, None)

    def publish() -> None:
        for _ in range(2000):
            bus.publish(event)

    def churn() -> None:
        for _ in range(500):
            bus.subscribe(ITEM_DONE, lambda _event: None).cancel()

    threads = [threading.Thread(target=publish) for _ in range(4)] + [threading.Thread(target=churn)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == {ITEM_DONE: 8000}
    assert len(bus._handlers[ITEM_DONE]) == 1


def test_events_module_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pacsflow.events; "
        "print(sorted(m for m in ('sqlalchemy', 'pydantic', 'httpx', 'pydicom', 'rich') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
