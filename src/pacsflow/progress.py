"""Progress for a run, drawn from its events: a rich bar on a terminal, periodic plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from pacsflow.events import (
    ITEM_DONE,
    ITEM_FAILED,
    ITEMS_ADDED,
    RUN_FINISHED,
    RUN_GOING_ON,
    RUN_OUTSIDE_WINDOW,
    RUN_STARTED,
    RUN_WAITING,
    Event,
    EventBus,
    EventType,
    Handler,
    Subscription,
)
from pacsflow.ledger import DONE, FINISHED, PENDING, SKIPPED, PlannedItem

log = logging.getLogger("pacsflow")


@dataclass(frozen=True)
class Units:
    """What a run's progress counts when its items are not what people count (an operation's `units`).

    Roster rows, say: a row is one ROW item, planned with the roster, and it is finished when its VERIFY
    item finishes, or when the ROW item itself fails (a missing folder has nothing to verify). Counting
    rows rather than items gives the bar its real total from the start: the files of a row become items
    only when its batch is scanned, so a count of items grows batch by batch and its ETA means nothing.

        units = Units("rows", {ROW}, finished_by={VERIFY: FINISHED, ROW: {FAILED}})

    NAME is the plural people read ("rows"); items of KINDS are the units (the total is how many the
    run has); FINISHED_BY maps a kind to the statuses whose items finish one unit, with that status
    (None: a unit item finishing finishes itself). OPENED is the note of an item that is replaced by the
    items it adds (an archive by its members): it finishes no unit itself, its children of KINDS count.
    While the run goes, an OPENED item that adds nothing counts as one unit; the ledger's count (the
    closing line) cannot tell it from one that did and leaves it out: give such items another note.
    """

    name: str
    kinds: Collection[str]
    finished_by: Mapping[str, Collection[str]] | None = None
    opened: str | None = None

    def _is_opened(self, status: str, note: str | None) -> bool:
        return self.opened is not None and note == self.opened and status in (DONE, SKIPPED)

    def finishes(self, kind: str | None, status: str, note: str | None = None, *, opened: bool = True) -> int:
        """How many units an item of KIND ending with STATUS (and NOTE) finishes: 0 or 1. OPENED False:
        the item added no items, so an OPENED note does not make it a container."""
        if kind is None or status not in FINISHED or (opened and self._is_opened(status, note)):
            return 0
        if self.finished_by is None:
            return int(kind in self.kinds)
        return int(status in self.finished_by.get(kind, ()))

    def added(
        self, kind: str, status: str, note: str | None, children: Sequence[PlannedItem]
    ) -> tuple[int, int]:
        """(units added, units among them finished already) when an item of KIND ending with STATUS and
        NOTE plans CHILDREN; an opened item's children take its place in the total."""
        units = [child for child in children if child.kind in self.kinds]
        settled = sum(self.finishes(child.kind, child.status, child.note) for child in units)
        replaced = int(kind in self.kinds and self._is_opened(status, note))
        return len(units) - replaced, settled

    def counts(self, tally: Mapping[tuple[str, str, str], int]) -> dict[str, int]:
        """Units by status (done, skipped, failed; pending for those not finished) from the ledger's
        tally of the run's items by (kind, status, note)."""
        total = 0
        found: Counter[str] = Counter()
        for (kind, status, note), count in tally.items():
            if kind in self.kinds and not self._is_opened(status, note or None):
                total += count
            if self.finishes(kind, status, note or None):
                found[status] += count
        unfinished = total - sum(found.values())
        if unfinished > 0:
            found[PENDING] = unfinished
        return dict(found)


class Progress(ABC):
    """Shows a run's progress: a subscriber of its events (`handlers()`, or `subscribe(bus)`) that draws
    with start, advance, grow, note and close, which LogProgress and BarProgress implement.

    It counts what RUN_STARTED says the run counts (items, or an operation's units such as roster
    rows), and measures rates on what this process moves from the moment it starts: items an earlier
    process finished are in the total and the count, never in a rate.
    """

    def __init__(self) -> None:
        self._pauses: dict[str, str] = {}  # remote ("" for the time window) -> why the run waits
        self._pauses_lock = threading.Lock()

    def handlers(self) -> list[tuple[EventType | tuple[EventType, ...], Handler]]:
        return [
            (RUN_STARTED, self._on_started),
            (ITEMS_ADDED, self._on_added),
            (ITEM_DONE, self._on_done),
            (ITEM_FAILED, self._on_failed),
            ((RUN_WAITING, RUN_OUTSIDE_WINDOW), self._on_paused),
            (RUN_GOING_ON, self._on_going_on),
            (RUN_FINISHED, self._on_finished),
        ]

    def subscribe(self, bus: EventBus) -> list[Subscription]:
        return bus.subscribe_all(self.handlers())

    def _on_started(self, event: Event) -> None:
        self.start(f"{event.operation} {event.run_id}", event.unit_total, event.unit_finished, event.unit)

    def _on_added(self, event: Event) -> None:
        self.grow(event.units)
        if event.settled:  # planned finished already (unchanged files an earlier run sent): no event follows
            self.advance(event.settled)

    def _on_done(self, event: Event) -> None:
        self.advance(event.units, event.nbytes)

    def _on_failed(self, event: Event) -> None:
        self.advance(event.units, 0, failed=event.units)

    def _on_paused(self, event: Event) -> None:
        with self._pauses_lock:
            self._pauses[event.remote or ""] = event.text or ""
            text = "; ".join(self._pauses.values())
        self.note(text)

    def _on_going_on(self, event: Event) -> None:
        with self._pauses_lock:
            self._pauses.pop(event.remote or "", None)
            text = "; ".join(self._pauses.values())
        self.note(text or None)

    def _on_finished(self, _event: Event) -> None:
        self.close()

    @abstractmethod
    def start(self, label: str, total: int, finished: int, unit: str = "items") -> None:
        """The run starts here: TOTAL UNIT known so far, FINISHED of them before this process began."""

    @abstractmethod
    def advance(self, count: int = 1, nbytes: int = 0, failed: int = 0) -> None: ...

    @abstractmethod
    def grow(self, count: int) -> None: ...

    @abstractmethod
    def note(self, text: str | None) -> None:
        """Show why the run waits (e.g. 'waiting for pacs (down since 03:02)'); None clears it."""

    @abstractmethod
    def close(self) -> None: ...


def _rate_text(nbytes: float, seconds: float) -> str:
    return f"{nbytes / 1e6 / seconds:.1f} MB/s" if seconds > 0 else "-"


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unit = "items"
        self.total = 0
        self.finished = 0
        self.done_here = 0
        self.failed = 0
        self.bytes = 0
        self.started = time.monotonic()


class LogProgress(Progress):
    """A line every INTERVAL seconds: counts, MB/s, ETA, and what the run waits for; never an item's key."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self.counts = _Counts()
        self.label = ""
        self.waiting: str | None = None
        self._last = 0.0

    def start(self, label: str, total: int, finished: int, unit: str = "items") -> None:
        self.label = label
        c = self.counts
        c.total, c.finished, c.unit = total, finished, unit
        c.started = self._last = time.monotonic()  # rates count from here: this process's own work

    def advance(self, count: int = 1, nbytes: int = 0, failed: int = 0) -> None:
        c = self.counts
        with c.lock:
            c.finished += count
            c.done_here += count
            c.failed += failed
            c.bytes += nbytes
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
        log.info(self._line())

    def grow(self, count: int) -> None:
        with self.counts.lock:
            self.counts.total += count

    def note(self, text: str | None) -> None:
        self.waiting = text  # the outage itself is logged where it is detected; the periodic line says it

    def _line(self) -> str:
        c = self.counts
        elapsed = time.monotonic() - c.started
        per_second = c.done_here / elapsed if elapsed > 0 else 0
        left = max(0, c.total - c.finished)
        eta = f"{left / per_second:.0f}s" if per_second > 0 else "?"
        waiting = f"; {self.waiting}" if self.waiting else ""
        return (
            f"{self.label}: {c.finished}/{c.total} {c.unit}, {c.failed} failed, "
            f"{_rate_text(c.bytes, elapsed)}, ETA {eta}{waiting}"
        )

    def close(self) -> None:
        if self.counts.done_here or self.counts.bytes:
            log.info(self._line())


class BarProgress(Progress):
    """A rich progress bar on stderr."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]},"),
            TextColumn("{task.fields[failed]} failed"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = None
        self._label = ""
        self._bytes = 0
        self._lock = threading.Lock()
        self._failed = 0
        self._started = time.monotonic()

    def start(self, label: str, total: int, finished: int, unit: str = "items") -> None:
        self._bar.start()
        self._started = time.monotonic()
        self._label = label
        self._task = self._bar.add_task(label, total=total, completed=finished, failed=0, speed="", unit=unit)

    def advance(self, count: int = 1, nbytes: int = 0, failed: int = 0) -> None:
        with self._lock:
            self._failed += failed
            self._bytes += nbytes
            speed = _rate_text(self._bytes, time.monotonic() - self._started)
            self._bar.update(self._task, advance=count, failed=self._failed, speed=speed)

    def grow(self, count: int) -> None:
        task = self._bar.tasks[0] if self._bar.tasks else None
        if task is not None:
            self._bar.update(self._task, total=(task.total or 0) + count)

    def note(self, text: str | None) -> None:
        if self._task is not None:
            label = self._label if not text else f"{self._label} [yellow]{text}[/]"
            self._bar.update(self._task, description=label)

    def close(self) -> None:
        if self._task is not None:  # a run stopped while planning never started the bar
            self._bar.stop()


def make_progress(quiet: bool = False) -> Progress:
    """A bar when stderr is a terminal, log lines otherwise (CI, cron, files)."""
    if not quiet and sys.stderr.isatty():
        return BarProgress()
    return LogProgress()
