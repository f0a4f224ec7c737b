"""Progress from run events: log lines off a terminal (counts, failures, MB/s, ETA, waits), a bar on one."""

from __future__ import annotations

import logging

import pytest

from pacsflow.events import Event, EventBus
from pacsflow.ledger import DONE, FAILED, FINISHED, PENDING, SKIPPED, PlannedItem
from pacsflow.progress import BarProgress, LogProgress, Units, make_progress


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


def test_units_count_roster_rows_not_items() -> None:
    rows = Units("rows", {"row"}, finished_by={"verify": FINISHED, "row": {FAILED}})
    tally = {
        ("row", DONE, ""): 3,  # scanned: their files are items now, their verify items follow
        ("row", FAILED, ""): 1,  # a missing folder: the row is finished, failed
        ("file", DONE, ""): 40,
        ("verify", DONE, ""): 2,
        ("row", PENDING, ""): 16,  # later batches, not scanned yet
        ("commit", DONE, ""): 1,
    }
    assert rows.counts(tally) == {DONE: 2, FAILED: 1, PENDING: 17}  # 20 rows, whatever the items
    assert rows.finishes("file", DONE) == 0 and rows.finishes("verify", FAILED) == 1
    assert rows.finishes("row", DONE) == 0 and rows.finishes("row", FAILED) == 1
    files = [PlannedItem("file", f"f/{n}") for n in range(5)]
    assert rows.added("row", DONE, None, [*files, PlannedItem("verify", "v/2")]) == (0, 0)


def test_units_replace_an_opened_archive_by_its_members() -> None:
    files = Units("files", {"file", "member"}, opened="archive")
    members = [PlannedItem("member", f"m/{n}") for n in range(12)]
    assert files.added("file", DONE, "archive", members) == (11, 0)  # 1 file planned -> 12 files
    assert files.finishes("file", DONE, "archive") == 0
    assert files.finishes("file", DONE, "archive", opened=False) == 1  # read within itself: one file
    tally = {("file", DONE, "archive"): 1, ("member", DONE, ""): 8, ("member", SKIPPED, "not DICOM"): 4}
    assert files.counts(tally) == {DONE: 8, SKIPPED: 4}  # the report agrees with "sent 8"


def test_progress_counts_the_run_s_units(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    progress = LogProgress(interval=0.0)
    progress.subscribe(bus)
    with caplog.at_level(logging.INFO, logger="pacsflow"):
        bus.publish(
            Event.run_started("r1", "roster-upload", 24, 0, unit="rows", unit_total=20, unit_finished=0)
        )
        bus.publish(Event.items_added("r1", 1, "row", 4, units=0))  # a row's files: not rows
        bus.publish(Event.item_done("r1", 2, "file", "f/x", DONE, 500_000, None, units=0))
        bus.publish(Event.item_done("r1", 6, "verify", "v/2", DONE, 0, None, units=1))
        bus.publish(Event.item_failed("r1", 7, "row", "r/3", note="missing", reason="missing", units=1))
    assert caplog.messages[-1].startswith("roster-upload r1: 2/20 rows, 1 failed, ")


def test_items_planned_finished_already_are_counted_as_finished() -> None:
    bar = BarProgress()
    bus = EventBus()
    bar.subscribe(bus)
    bus.publish(Event.run_started("r1", "upload", total=1, finished=0))
    # a folder listed on retry: three files, two of them sent by an earlier run and unchanged
    bus.publish(Event.items_added("r1", 1, "folder", 3, settled=2))
    bus.publish(Event.item_done("r1", 1, "folder", "f", DONE, 0, None))
    bus.publish(Event.item_done("r1", 2, "file", "a", DONE, 10, None))
    task = bar._bar.tasks[0]
    assert (task.completed, task.total) == (4, 4)  # it never ends short of its total
    bar.close()


def test_rates_count_from_the_start_of_this_process_s_work(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("pacsflow.progress.time.monotonic", lambda: clock[0])
    progress = LogProgress(interval=0.0)
    clock[0] += 60  # planning took a minute: not part of the rate
    progress.start("upload r1", total=10, finished=5)  # five sent by an earlier process: not either
    clock[0] += 2
    progress.advance(5, nbytes=10_000_000)
    assert ", 5.0 MB/s, " in progress._line()
