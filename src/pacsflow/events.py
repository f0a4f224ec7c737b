"""Run and item events: what the engine tells subscribers (progress, logs, heartbeats, metrics, web)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pacsflow.wording import plural

log = logging.getLogger("pacsflow")


class EventType(StrEnum):
    """What happened. Like pynetdicom's notification events: any number of handlers, none answers back.

    The Event properties each type sets are listed in `Event`'s docstring.
    """

    RUN_STARTED = "run_started"  #: this process starts working the run
    RUN_WAITING = "run_waiting"  #: a remote is down: its items wait for it
    RUN_GOING_ON = "run_going_on"  #: a pause is over: the remote answers again, or the time window opened
    RUN_OUTSIDE_WINDOW = "run_outside_window"  #: paused by the time window
    RUN_FINISHED = "run_finished"  #: this process stopped working the run (done, failed, stopped, left)
    ITEMS_ADDED = "items_added"  #: an item planned more items (an archive's members, say)
    ITEM_DONE = "item_done"  #: an item ended done or skipped
    ITEM_RETRY = "item_retry"  #: an item failed for now: back to pending, tried again later
    ITEM_FAILED = "item_failed"  #: an item failed for good (or items whose attempts never reported back)


RUN_STARTED = EventType.RUN_STARTED
RUN_WAITING = EventType.RUN_WAITING
RUN_GOING_ON = EventType.RUN_GOING_ON
RUN_OUTSIDE_WINDOW = EventType.RUN_OUTSIDE_WINDOW
RUN_FINISHED = EventType.RUN_FINISHED
ITEMS_ADDED = EventType.ITEMS_ADDED
ITEM_DONE = EventType.ITEM_DONE
ITEM_RETRY = EventType.ITEM_RETRY
ITEM_FAILED = EventType.ITEM_FAILED

RUN_EVENTS = (RUN_STARTED, RUN_WAITING, RUN_GOING_ON, RUN_OUTSIDE_WINDOW, RUN_FINISHED)
ITEM_EVENTS = (ITEMS_ADDED, ITEM_DONE, ITEM_RETRY, ITEM_FAILED)
ALL_EVENTS = RUN_EVENTS + ITEM_EVENTS


@dataclass(frozen=True, slots=True, eq=False)  # each event is itself: compared and hashed by identity
class Event:
    """One thing that happened to a run: its TYPE, the RUN_ID, the wall-clock TIME, and typed properties
    read from DATA. A property an event type does not set reads as None (0, False, {} for numbers,
    flags and counts).

    - RUN_STARTED: operation, total (items planned), finished (already finished before this start), and
      what progress counts: unit ("items", or the operation's own: "rows"), unit_total, unit_finished
    - RUN_WAITING: remote, since (wall clock), text (`waiting for NAME (down since HH:MM)`)
    - RUN_GOING_ON: remote (None when the time window opened again), since, text
    - RUN_OUTSIDE_WINDOW: until (wall clock), text
    - RUN_FINISHED: status, counts, nbytes (the whole run's), nbytes_here (moved by this process:
      rates divide these by elapsed), elapsed, error, reason, gave_up, text (what it waits for when it
      left items waiting for a remote)
    - ITEMS_ADDED: item_id, number, kind (the item that planned them), count, units (of progress
      added), settled (units among them planned finished already)
    - ITEM_DONE: item_id, number, kind, key, status (done or skipped), nbytes, note, count (1), units
    - ITEM_RETRY: item_id, number, kind, key, note, reason, attempts, retry_at, count (1)
    - ITEM_FAILED: item_id, number, kind, key, note, reason, attempts, count (1; or, with item_id None,
      how many items failed because their attempts never reported back), units

    `item_id` is the item's row in the ledger (unique across runs); `number` counts within its run, as
    logs and `pacsflow run show` name items (`file #3`). `units` is how much of the run's progress
    (RUN_STARTED's unit) the event finishes or adds: the item count unless the operation counts rows.

    Patient data: `key` (a file path, a patient's folder, an Orthanc ID), `note` of a failure and
    `error` may name a patient, as the ledger does; `reason` and `text` never do. Anything that logs or
    shows events to other people leaves them out unless log_phi (as `describe()` and `str()` do).
    Handlers share one Event: read it, never change its data.
    """

    type: EventType
    run_id: str
    time: float
    data: Mapping[str, Any]

    # -- constructors: one per type, so that publishers cannot get a name wrong --------------------

    @classmethod
    def run_started(
        cls,
        run_id: str,
        operation: str,
        total: int,
        finished: int,
        *,
        unit: str = "items",
        unit_total: int | None = None,
        unit_finished: int | None = None,
    ) -> Event:
        data = {"operation": operation, "total": total, "finished": finished, "unit": unit}
        data.update(
            unit_total=total if unit_total is None else unit_total,
            unit_finished=finished if unit_finished is None else unit_finished,
        )
        return cls(RUN_STARTED, run_id, time.time(), data)

    @classmethod
    def run_waiting(cls, run_id: str, remote: str, since: float, text: str) -> Event:
        return cls(RUN_WAITING, run_id, time.time(), {"remote": remote, "since": since, "text": text})

    @classmethod
    def run_going_on(cls, run_id: str, remote: str | None, since: float | None, text: str) -> Event:
        return cls(RUN_GOING_ON, run_id, time.time(), {"remote": remote, "since": since, "text": text})

    @classmethod
    def run_outside_window(cls, run_id: str, until: float, text: str) -> Event:
        return cls(RUN_OUTSIDE_WINDOW, run_id, time.time(), {"until": until, "text": text})

    @classmethod
    def run_finished(
        cls,
        run_id: str,
        status: str,
        counts: Mapping[str, int],
        nbytes: int,
        elapsed: float,
        *,
        error: str | None = None,
        reason: str | None = None,
        gave_up: bool = False,
        text: str | None = None,
        nbytes_here: int | None = None,
    ) -> Event:
        data = {"status": status, "counts": dict(counts), "nbytes": nbytes, "elapsed": elapsed}
        data.update(error=error, reason=reason, gave_up=gave_up, text=text)
        data["nbytes_here"] = nbytes if nbytes_here is None else nbytes_here
        return cls(RUN_FINISHED, run_id, time.time(), data)

    @classmethod
    def items_added(
        cls,
        run_id: str,
        item_id: int,
        kind: str,
        count: int,
        *,
        number: int | None = None,
        units: int | None = None,
        settled: int = 0,
    ) -> Event:
        data = {"item_id": item_id, "number": number, "kind": kind, "count": count}
        data.update(units=count if units is None else units, settled=settled)
        return cls(ITEMS_ADDED, run_id, time.time(), data)

    @classmethod
    def item_done(
        cls,
        run_id: str,
        item_id: int,
        kind: str,
        key: str,
        status: str,
        nbytes: int,
        note: str | None,
        *,
        number: int | None = None,
        units: int = 1,
    ) -> Event:
        data = {
            "item_id": item_id,
            "number": number,
            "kind": kind,
            "key": key,
            "status": status,
            "nbytes": nbytes,
            "note": note,
            "units": units,
        }
        return cls(ITEM_DONE, run_id, time.time(), data)

    @classmethod
    def item_retry(
        cls,
        run_id: str,
        item_id: int,
        kind: str,
        key: str,
        *,
        note: str | None,
        reason: str | None,
        attempts: int,
        retry_at: float | None,
        number: int | None = None,
    ) -> Event:
        data = {"item_id": item_id, "kind": kind, "key": key, "note": note, "reason": reason}
        data.update(attempts=attempts, retry_at=retry_at, number=number)
        return cls(ITEM_RETRY, run_id, time.time(), data)

    @classmethod
    def item_failed(
        cls,
        run_id: str,
        item_id: int | None,
        kind: str | None,
        key: str | None,
        *,
        note: str | None,
        reason: str | None,
        attempts: int = 0,
        count: int = 1,
        number: int | None = None,
        units: int | None = None,
    ) -> Event:
        data = {"item_id": item_id, "kind": kind, "key": key, "note": note, "reason": reason}
        data.update(attempts=attempts, count=count, number=number, units=count if units is None else units)
        return cls(ITEM_FAILED, run_id, time.time(), data)

    # -- typed views of data ------------------------------------------------------------------------

    @property
    def operation(self) -> str | None:
        return self.data.get("operation")

    @property
    def total(self) -> int:
        return self.data.get("total", 0)

    @property
    def finished(self) -> int:
        return self.data.get("finished", 0)

    @property
    def unit(self) -> str:
        """What the run's progress counts: "items", or the operation's own ("rows")."""
        return self.data.get("unit") or "items"

    @property
    def unit_total(self) -> int:
        return self.data.get("unit_total", self.total)

    @property
    def unit_finished(self) -> int:
        return self.data.get("unit_finished", self.finished)

    @property
    def remote(self) -> str | None:
        return self.data.get("remote")

    @property
    def since(self) -> float | None:
        return self.data.get("since")

    @property
    def until(self) -> float | None:
        return self.data.get("until")

    @property
    def text(self) -> str | None:
        """For people, without patient data: the waiting text, the window, what a run left waits for."""
        return self.data.get("text")

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    @property
    def counts(self) -> Mapping[str, int]:
        return self.data.get("counts") or {}

    @property
    def nbytes(self) -> int:
        return self.data.get("nbytes", 0)

    @property
    def nbytes_here(self) -> int:
        """RUN_FINISHED: the bytes this process moved (the run's nbytes count earlier processes too)."""
        return self.data.get("nbytes_here", self.nbytes)

    @property
    def elapsed(self) -> float:
        return self.data.get("elapsed", 0.0)

    @property
    def error(self) -> str | None:
        """The error a run stopped with, whole (may name a file or patient, as the ledger's summary)."""
        return self.data.get("error")

    @property
    def gave_up(self) -> bool:
        return self.data.get("gave_up", False)

    @property
    def item_id(self) -> int | None:
        return self.data.get("item_id")

    @property
    def number(self) -> int | None:
        """The item's number within its run (`file #3`), as logs and `run show` name it."""
        return self.data.get("number")

    @property
    def kind(self) -> str | None:
        return self.data.get("kind")

    @property
    def key(self) -> str | None:
        """The item's key: may name a patient (a file path, a folder, an ID). Log it only with log_phi."""
        return self.data.get("key")

    @property
    def note(self) -> str | None:
        """ITEM_DONE: why skipped, say; a failure: the whole error as the ledger keeps it (may name a
        patient)."""
        return self.data.get("note")

    @property
    def reason(self) -> str | None:
        """A failure's error without file names or IDs: fit for any log."""
        return self.data.get("reason")

    @property
    def attempts(self) -> int:
        return self.data.get("attempts", 0)

    @property
    def retry_at(self) -> float | None:
        return self.data.get("retry_at")

    @property
    def count(self) -> int:
        """How many items the event is about (ITEMS_ADDED: how many were planned)."""
        return self.data.get("count", 1 if self.type in (ITEM_DONE, ITEM_RETRY) else 0)

    @property
    def units(self) -> int:
        """How many units of the run's progress the event finishes (ITEMS_ADDED: adds)."""
        return self.data.get("units", self.count)

    @property
    def settled(self) -> int:
        """ITEMS_ADDED: how many of the units added were planned finished already (e.g. files an
        earlier run sent, unchanged since)."""
        return self.data.get("settled", 0)

    # -- for people ---------------------------------------------------------------------------------

    def describe(self, log_phi: bool = False) -> str:
        """One line for a log: items by number (`file #42`), their key and errors whole only with LOG_PHI."""
        kind = self.type
        if kind in (RUN_WAITING, RUN_GOING_ON, RUN_OUTSIDE_WINDOW):
            return f"run {self.run_id}: {self.text}"
        if kind == RUN_STARTED:
            return (
                f"run {self.run_id}: {self.operation}, {plural(self.total, 'item')}, "
                f"{self.finished} finished before"
            )
        if kind == RUN_FINISHED:
            counts = ", ".join(f"{n} {status}" for status, n in self.counts.items() if n)
            error = self.error if log_phi else self.reason
            tail = f"; {error}" if error else ""
            return f"run {self.run_id}: {self.status} ({counts or 'no items'}) in {self.elapsed:.1f}s{tail}"
        if self.item_id is None:
            return f"run {self.run_id}: {plural(self.count, 'item')} failed: {self.reason}"
        name = item_label(self.kind or "item", self.number or self.item_id, self.key)
        if log_phi:
            name = f"{name} {self.key}"
        if kind == ITEMS_ADDED:
            return f"{name}: {plural(self.count, 'more item')} planned"
        if kind == ITEM_DONE:
            return f"{name} {self.status}" + (f" ({self.note})" if self.note else "")
        error = self.note if log_phi else self.reason
        if kind == ITEM_RETRY:
            return f"{name}: {error} (attempt {self.attempts}, retry at {_clock(self.retry_at)})"
        return f"{name} failed: {error}"

    def __str__(self) -> str:
        return self.describe()


def item_label(kind: str, number: int, key: str | None = None) -> str:
    """How logs and `run show` name an item without patient data: `file #3` (its number in the run),
    a roster row by its line in the roster (`row at line 12`, the line people look up, not a number of
    ours), a roster batch by its number from 1. KEY is read only for those line and batch numbers."""
    if key and kind in ("row", "verify", "commit"):
        prefix, _, rest = key.partition("/")
        if rest.isdigit():
            if (kind, prefix) == ("row", "r"):
                return f"row at line {rest}"
            if (kind, prefix) == ("verify", "v"):
                return f"verify of the row at line {rest}"
            if (kind, prefix) == ("commit", "c"):
                return f"batch {int(rest) + 1}"
    return f"{kind} #{number}"


def _clock(when: float | None) -> str:
    return f"{datetime.fromtimestamp(when):%H:%M:%S}" if when is not None else "once resumed"


Handler = Callable[[Event], None]
#: (event type or types, handler) pairs, as pynetdicom's evt_handlers
Handlers = Iterable[tuple[EventType | Iterable[EventType], Handler]]


class Subscription:
    """What `EventBus.subscribe` returns: `cancel()` it to stop receiving events."""

    __slots__ = ("_bus", "handler", "types")

    def __init__(self, bus: EventBus, types: tuple[EventType, ...], handler: Handler) -> None:
        self._bus = bus
        self.types = types
        self.handler = handler

    def cancel(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    """Hands each published event to the handlers of its type, synchronously, in the order they
    subscribed. Publish from any thread; the engine publishes item events from its one dispatcher thread,
    outages from the threads that notice them. A handler that raises is logged once and never stops the
    run (nor the other handlers)."""

    def __init__(self, handlers: Handlers = ()) -> None:
        self._lock = threading.Lock()
        #: replaced whole, never changed in place: publish reads it without the lock
        self._handlers: dict[EventType, tuple[Subscription, ...]] = {}
        self._failed: set[int] = set()
        for types, handler in handlers:
            self.subscribe(types, handler)

    def subscribe(self, types: EventType | Iterable[EventType], handler: Handler) -> Subscription:
        """Call HANDLER(event) for every event of TYPES (one type or several, e.g. ALL_EVENTS)."""
        chosen = (types,) if isinstance(types, EventType) else tuple(types)
        subscription = Subscription(self, chosen, handler)
        with self._lock:
            table = dict(self._handlers)
            for kind in chosen:
                table[EventType(kind)] = (*table.get(kind, ()), subscription)
            self._handlers = table
        return subscription

    def subscribe_all(self, handlers: Handlers) -> list[Subscription]:
        """Subscribe each (types, handler) pair."""
        return [self.subscribe(types, handler) for types, handler in handlers]

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            table = {
                kind: tuple(s for s in subscribed if s is not subscription)
                for kind, subscribed in self._handlers.items()
            }
            self._handlers = {kind: subscribed for kind, subscribed in table.items() if subscribed}

    def wants(self, kind: EventType) -> bool:
        """True when some handler takes events of KIND (to skip building events nobody reads)."""
        return kind in self._handlers

    def publish(self, event: Event) -> None:
        for subscription in self._handlers.get(event.type, ()):
            try:
                subscription.handler(event)
            except Exception:
                self._handler_failed(subscription, event)

    def _handler_failed(self, subscription: Subscription, event: Event) -> None:
        with self._lock:
            if id(subscription) in self._failed:
                return
            self._failed.add(id(subscription))
        name = getattr(subscription.handler, "__qualname__", type(subscription.handler).__name__)
        # the event itself stays out of the log: its key may name a patient
        log.exception("event handler %s failed on %s (later failures of it are not logged)", name, event.type)
