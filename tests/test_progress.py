"""Progress: plain log lines off a terminal, with counts, failures, MB/s and ETA."""

from __future__ import annotations

import logging

import pytest

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
