"""Progress from run events: log lines off a terminal (counts, failures, MB/s, ETA, waits), a bar on one."""

from __future__ import annotations

import logging

import pytest

from pacsflow.events import Event, EventBus
from pacsflow.ledger import DONE, FAILED
from pacsflow.progress import BarProgress, LogProgress, make_progress


def test_log_lines_carry_counts_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    progress = LogProgress(interval=0.0)
    with caplog.at_level(logging.INFO, logger="pacsflow"):
        progress.start("upload r1", total=10, finished=2)
        progress.grow(5)
        progress.advance(3, nbytes=3_000_000)
        progress.advance(1, failed=1)
        progress.close()
    last = caplog.records[-1].getMessage()
    assert last.startswith("upload r1: 6/15 items, 1 failed, ")
    assert "MB/s" in last and "ETA" in last


def test_bar_only_on_a_terminal() -> None:
    assert isinstance(make_progress(), LogProgress)  # pytest captures stderr: not a terminal
    assert isinstance(make_progress(quiet=True), LogProgress)
    bar = BarProgress()
    bar.start("x", total=2, finished=0)
    bar.advance(2, nbytes=10)
    bar.close()
    assert bar._bar.tasks[0].completed == 2


def test_progress_draws_from_run_events(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    progress = LogProgress(interval=0.0)
    progress.subscribe(bus)
    with caplog.at_level(logging.INFO, logger="pacsflow"):
        bus.publish(Event.run_started("r1", "upload", total=10, finished=2))
        bus.publish(Event.items_added("r1", 7, "archive", 5))
        bus.publish(Event.run_waiting("r1", "pacs", 0.0, "waiting for pacs (down since 01:00)"))
        bus.publish(Event.item_done("r1", 7, "archive", "scans.zip", DONE, 3_000_000, None))
        bus.publish(Event.run_going_on("r1", "pacs", 0.0, "pacs answers again after 5s"))
        bus.publish(Event.item_failed("r1", 8, "file", "a.dcm", note="a.dcm: corrupt", reason="corrupt"))
        bus.publish(Event.run_finished("r1", "failed", {DONE: 1, FAILED: 1}, 3_000_000, 1.0))
    lines = caplog.messages
    assert lines[0].startswith("upload r1: 3/15 items, 0 failed, ")
    assert lines[0].endswith("; waiting for pacs (down since 01:00)")
    assert lines[-1].startswith("upload r1: 4/15 items, 1 failed, ") and "waiting" not in lines[-1]


def test_bar_shows_what_the_run_waits_for() -> None:
    bus = EventBus()
    bar = BarProgress()
    bar.subscribe(bus)
    bus.publish(Event.run_started("r1", "transfer", total=3, finished=0))
    bus.publish(Event.run_waiting("r1", "pacs", 0.0, "waiting for pacs (down since 01:00)"))
    bus.publish(Event.run_outside_window("r1", 0.0, "outside time window 19:00-07:00"))
    description = bar._bar.tasks[0].description
    assert "waiting for pacs" in description and "outside time window" in description
    bus.publish(Event.run_going_on("r1", "pacs", 0.0, "pacs answers again after 5s"))
    bus.publish(Event.run_going_on("r1", None, None, "inside time window 19:00-07:00"))
    bus.publish(Event.item_done("r1", 1, "study", "s", DONE, 10, None))
    assert bar._bar.tasks[0].description == "transfer r1" and bar._bar.tasks[0].completed == 1
    bus.publish(Event.run_finished("r1", "done", {DONE: 1}, 10, 1.0))
    assert not bar._bar.live.is_started
