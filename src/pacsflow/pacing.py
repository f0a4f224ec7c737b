"""Pacing for the engine: token-bucket rate limits, retry backoff, time windows (nights, weekends)."""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from pacsflow.errors import ConfigError

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_rate(text: str) -> float:
    """'700/min' -> requests per second (11.67); '10/s'; '5000/h'."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*", text.lower())
    if not match or match[2].rstrip("s") not in {u.rstrip("s") for u in _UNITS} or float(match[1]) <= 0:
        raise ConfigError(f"bad rate {text!r}: write it like 700/min, 10/s or 5000/h")
    unit = match[2] if match[2] in _UNITS else match[2].rstrip("s")
    return float(match[1]) / _UNITS[unit]


class TokenBucket:
    """Allows RATE acquisitions per second on average with bursts up to BURST; thread-safe."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, min(rate, 10.0))
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def try_acquire(self) -> float:
        """Take a token and return 0, or return how long to wait before one is available."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until a token is taken (True) or STOP is set (False)."""
        while True:
            wait = self.try_acquire()
            if wait == 0.0:
                return True
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)


_LIMITERS: dict[str, TokenBucket] = {}
_LIMITERS_LOCK = threading.Lock()


def name_key(name: str) -> str:
    """How names of servers, modalities and rate limits compare: case and `-`/`_` do not matter."""
    return name.casefold().replace("-", "_")


def configure_limits(rate_limits: dict[str, str]) -> None:
    """Set this process's rate limits (`[rate_limits]`: remote name -> '700/min').

    One bucket per remote and process, shared by every client of that remote (each worker, each
    follower cycle), so the limit holds however the work is split into threads and runs.
    """
    with _LIMITERS_LOCK:
        wanted = {name_key(name): parse_rate(rate) for name, rate in rate_limits.items()}
        for key in list(_LIMITERS):
            if key not in wanted:
                del _LIMITERS[key]
        for key, rate in wanted.items():
            if key not in _LIMITERS or _LIMITERS[key].rate != rate:
                _LIMITERS[key] = TokenBucket(rate)


def limiter_for(name: str | None) -> TokenBucket | None:
    """The bucket every request to remote NAME takes a token from, or None when it has no limit."""
    if not name:
        return None
    with _LIMITERS_LOCK:
        return _LIMITERS.get(name_key(name))


def take(bucket: TokenBucket | None, count: int) -> None:
    """COUNT tokens from BUCKET (nothing when the remote has no limit): for a request that stands for
    COUNT requests to it, like a C-STORE job of COUNT instances that another server sends for us."""
    if bucket is not None:
        for _ in range(count):
            bucket.acquire()


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and in delay."""

    max_attempts: int = 5
    base: float = 1.0
    cap: float = 300.0

    def delay(self, attempt: int) -> float:
        raw = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return raw * (0.5 + random.random())

    def should_retry(self, attempt: int) -> bool:
        return attempt < self.max_attempts


@dataclass(frozen=True)
class _Span:
    days: frozenset[int]
    start: int  # minutes after midnight
    end: int  # exclusive; may be <= start for a span that crosses midnight


class TimeWindow:
    """When work may run, e.g. 'Mon-Fri 19:00-07:00, Sat-Sun' (local time; a span may cross midnight)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.spans = tuple(self._parse_part(part) for part in text.split(",") if part.strip())
        if not self.spans:
            raise ConfigError(f"empty time window {text!r}")

    @staticmethod
    def _parse_part(part: str) -> _Span:
        tokens = part.strip().lower().split()
        days: set[int] = set(range(7))
        hours = "00:00-24:00"
        if len(tokens) == 1 and ":" in tokens[0]:
            hours = tokens[0]
        elif len(tokens) == 1:
            days = _parse_days(tokens[0], part)
        elif len(tokens) == 2:
            days, hours = _parse_days(tokens[0], part), tokens[1]
        else:
            raise ConfigError(f"bad time window part {part.strip()!r}: write e.g. 'Mon-Fri 19:00-07:00'")
        match = re.fullmatch(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})", hours)
        if not match:
            raise ConfigError(f"bad hours {hours!r} in time window: write HH:MM-HH:MM")
        start = int(match[1]) * 60 + int(match[2])
        end = int(match[3]) * 60 + int(match[4])
        if start > 24 * 60 or end > 24 * 60 or int(match[2]) > 59 or int(match[4]) > 59:
            raise ConfigError(f"bad hours {hours!r} in time window")
        return _Span(frozenset(days), start, end)

    def is_open(self, when: datetime | None = None) -> bool:
        when = when or datetime.now()
        minute = when.hour * 60 + when.minute
        weekday = when.weekday()
        for span in self.spans:
            if span.start < span.end:
                if weekday in span.days and span.start <= minute < span.end:
                    return True
            else:  # crosses midnight: the evening belongs to the day named, the morning to the next day
                if weekday in span.days and minute >= span.start:
                    return True
                if (weekday - 1) % 7 in span.days and minute < span.end:
                    return True
        return False

    def next_open(self, when: datetime | None = None) -> datetime:
        """The first minute at or after WHEN when the window is open (searches a week ahead)."""
        when = (when or datetime.now()).replace(second=0, microsecond=0)
        for step in range(7 * 24 * 60 + 1):
            candidate = when + timedelta(minutes=step)
            if self.is_open(candidate):
                return candidate
        raise ConfigError(f"time window {self.text!r} is never open")

    def __str__(self) -> str:
        return self.text


def _parse_days(text: str, part: str) -> set[int]:
    days: set[int] = set()
    for piece in text.split("+"):
        if "-" in piece:
            first, last = piece.split("-", 1)
            a, b = _day(first, part), _day(last, part)
            days.update((a + k) % 7 for k in range((b - a) % 7 + 1))
        else:
            days.add(_day(piece, part))
    return days


def _day(text: str, part: str) -> int:
    key = text[:3]
    if key not in _DAYS:
        raise ConfigError(f"bad day {text!r} in time window part {part.strip()!r}: use Mon..Sun")
    return _DAYS.index(key)
