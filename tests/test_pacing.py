"""Rate limits, retry backoff and time windows."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest

from pacsflow.errors import ConfigError
from pacsflow.pacing import RetryPolicy, TimeWindow, TokenBucket, parse_rate


def test_parse_rate() -> None:
    assert parse_rate("700/min") == pytest.approx(700 / 60)
    assert parse_rate("10/s") == 10
    assert parse_rate("3600/hour") == 1
    for bad in ("fast", "10/fortnight", "0/s", "-1/min"):
        with pytest.raises(ConfigError):
            parse_rate(bad)


def test_token_bucket_holds_the_rate() -> None:
    bucket = TokenBucket(rate=50.0, burst=1.0)
    started = time.monotonic()
    for _ in range(26):
        bucket.acquire()
    elapsed = time.monotonic() - started
    assert elapsed >= 0.45  # 25 tokens after the first at 50/s need 0.5 s


def test_token_bucket_gives_up_when_stopped() -> None:
    bucket = TokenBucket(rate=0.1, burst=1.0)
    bucket.acquire()
    stop = threading.Event()
    stop.set()
    assert bucket.acquire(stop) is False


def test_retry_backoff_grows_and_is_bounded() -> None:
    policy = RetryPolicy(max_attempts=4, base=1.0, cap=10.0)
    assert 0.5 <= policy.delay(1) <= 1.5
    assert 4.0 <= policy.delay(4) <= 12.0
    assert policy.delay(30) <= 15.0
    assert policy.should_retry(3) and not policy.should_retry(4)


def test_window_nights_and_weekends() -> None:
    window = TimeWindow("Mon-Fri 19:00-07:00, Sat-Sun")
    assert window.is_open(datetime(2026, 11, 23, 20, 0))  # Monday evening
    assert window.is_open(datetime(2026, 11, 24, 6, 59))  # Tuesday early morning
    assert not window.is_open(datetime(2026, 11, 24, 7, 0))  # Tuesday 07:00
    assert not window.is_open(datetime(2026, 11, 27, 12, 0))  # Friday noon
    assert window.is_open(datetime(2026, 11, 28, 12, 0))  # Saturday
    assert window.is_open(datetime(2026, 11, 24, 2, 0))  # Monday night spills into Tuesday
    assert window.next_open(datetime(2026, 11, 27, 12, 0)) == datetime(2026, 11, 27, 19, 0)


def test_window_daily_hours_only() -> None:
    window = TimeWindow("01:00-05:30")
    assert window.is_open(datetime(2026, 11, 25, 1, 0))
    assert not window.is_open(datetime(2026, 11, 25, 5, 30))


@pytest.mark.parametrize("text", ["Mon-Fry 19:00-07:00", "Mon 25:00-26:00", "Mon 7-8", "", "Mon Tue Wed"])
def test_bad_window_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        TimeWindow(text)
