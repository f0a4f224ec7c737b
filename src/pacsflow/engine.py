"""The run engine: works a run's items with worker threads, rate limits, retries, time windows, stop."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pacsflow.config import Settings
from pacsflow.errors import PacsflowError, public_text
from pacsflow.events import Event, EventBus, Handlers, item_label
from pacsflow.ledger import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    Item,
    Ledger,
    Record,
    RunInfo,
    exhausted_note,
    new_worker_id,
)
from pacsflow.ops.base import Operation, operation_class, summarize
from pacsflow.outages import Outage, Outages
from pacsflow.pacing import RetryPolicy, TimeWindow, configure_limits
from pacsflow.progress import LogProgress, Progress, Units
from pacsflow.status import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from pacsflow.wording import plural, singular_of

#: how long a remote may stay unreachable before a run gives up on it, unless configured
DEFAULT_GIVE_UP_AFTER = 3600.0

log = logging.getLogger("pacsflow")
T = TypeVar("T")


@dataclass
class RunResult:
    """How a run ended, as seen by this process.

    COUNTS and BYTES are the whole run's, as the ledger holds them (earlier processes included);
    ELAPSED and BYTES_HERE are this process's own work, so a rate is BYTES_HERE / ELAPSED: a resumed run
    that had little left is not credited with what others sent before it.
    """

    run_id: str
    status: str
    counts: dict[str, int]
    bytes: int
    elapsed: float
    error: PacsflowError | None = None
    lines: list[str] = field(default_factory=list)
    #: stopped because a remote stayed unreachable for longer than --give-up-after
    gave_up: bool = False
    #: left with items waiting for remotes that are down (engines with leave_when_waiting)
    waiting: str | None = None
    #: bytes this process moved in this run (BYTES counts every process's)
    bytes_here: int = 0
    #: what people count in this run when not its items (an operation's `units`: "rows"), and how
    #: many of them ended how; None: COUNTS are what people count
    unit: str = "items"
    unit_counts: dict[str, int] | None = None

    @property
    def shown_counts(self) -> dict[str, int]:
        """Counts of what people count: the operation's units (roster rows) or else items."""
        return self.counts if self.unit_counts is None else self.unit_counts

    @property
    def exit_code(self) -> int:
        if self.error is not None and self.error.fatal:
            return EXIT_USAGE
        if self.gave_up:
            return EXIT_FAILED
        if self.status == "stopped":
            return EXIT_INTERRUPTED
        if self.counts.get(FAILED, 0):
            return EXIT_FAILED
        return EXIT_OK


class Engine:
    """Owns concurrency, pacing, retries and outage pauses; operations only plan and do one item.

    What happens is published on `events` (see pacsflow.events): HANDLERS, as pynetdicom's evt_handlers,
    are (event type or types, handler) pairs; PROGRESS (log lines unless given) is one more subscriber.
    """

    def __init__(
        self,
        ledger: Ledger,
        settings: Settings,
        *,
        workers: int | None = None,
        progress: Progress | None = None,
        window: str | None = None,
        retry: RetryPolicy | None = None,
        lease_seconds: float = 60.0,
        stop: threading.Event | None = None,
        log_phi: bool | None = None,
        give_up_after: float | None = None,
        outages: Outages | None = None,
        leave_when_waiting: bool = False,
        handlers: Handlers | None = None,
    ) -> None:
        self.ledger = ledger
        self.settings = settings
        self.workers = workers or settings.workers
        #: run and item events; subscribe before a run starts
        self.events = EventBus()
        self.progress = progress or LogProgress()
        self.events.subscribe_all(self.progress.handlers())
        self.events.subscribe_all(handlers or ())
        window = window if window is not None else settings.window
        self.window = TimeWindow(window) if window else None
        self.retry = retry or RetryPolicy(max_attempts=settings.retries)
        self.lease_seconds = lease_seconds
        #: set from outside (Ctrl-C, SIGTERM, a worker or follower stopping): this process stops working
        self.stop = stop or threading.Event()
        #: set by the engine itself (fatal error, gave up on a remote): this run stops, not its caller
        self.halted = threading.Event()
        self.log_phi = settings.log_phi if log_phi is None else log_phi
        configure_limits(settings.rate_limits)  # the clients of each remote take their tokens there
        if give_up_after is None:
            give_up_after = getattr(settings, "give_up_after", None) or DEFAULT_GIVE_UP_AFTER
        #: remotes that are down; a follower or worker shares one across its runs, so that an outage is
        #: reported once and given up on after give_up_after, however many runs it spans
        self.outages = outages if outages is not None else Outages(give_up_after)
        #: return (status "running") rather than wait when only items of remotes that are down are left:
        #: a follower goes on reading its change feed, a worker goes on with other runs
        self.leave_when_waiting = leave_when_waiting
        self.worker_id = new_worker_id()
        self._fatal: PacsflowError | None = None
        self._gave_up: PacsflowError | None = None
        self._outstanding = 0  # claimed and not yet recorded; only the dispatcher thread touches it
        self._results: queue.Queue[Record] = queue.Queue()
        self._wake = threading.Event()
        self._run_id: str | None = None  # the run whose outage events this engine publishes
        #: public reasons of failed items, by item id: from the worker that saw the error to the dispatcher
        self._reasons: dict[int, str] = {}
        #: bytes this process moved in the run it works (for rates: never what earlier processes sent)
        self._bytes_here = 0
        #: the id of the run's first item: items are numbered from it for people (`file #3`), not by
        #: their row in a ledger that holds every run
        self._first_item = 1
        #: what progress counts, when the operation counts something else than items (roster rows)
        self._units: Units | None = None

    # -- entry points ---------------------------------------------------------------------------

    def start(self, op: Operation, *, plan_only: bool = False) -> RunResult:
        """Check, plan and (unless PLAN_ONLY) work a new run of OP."""
        op.ledger = self.ledger
        op.preflight()
        run_id = self.ledger.create_run(op.name, op.params)
        log.info("run %s: %s planning", run_id, op.name)
        with self._publishing_outages(run_id):
            return self._plan_and_execute(op, run_id, plan_only=plan_only)

    def resume(self, run_ref: str) -> RunResult:
        """Continue a run (this process joins it; other processes may be working it too)."""
        run = self.ledger.run(run_ref)
        op = operation_class(run.operation)(self.settings, run.params)
        op.ledger = self.ledger
        op.run_id = run.id  # preflight may tell a resume from a start (inputs read only when planning)
        op.preflight()
        with self._publishing_outages(run.id):
            if run.status == "planning":
                return self._plan_and_execute(op, run.id, plan_only=False)
            return self.execute(op, run.id)

    def _plan_and_execute(self, op: Operation, run_id: str, *, plan_only: bool) -> RunResult:
        op.run_id = run_id
        added = 0
        while True:
            try:
                # planning again after an outage is harmless: keys the run has already are ignored
                added += self.ledger.add_items(run_id, op.plan())
                break
            except PacsflowError as exc:
                if self.outages.confirm(exc) and self._wait_out_outages():
                    continue
                if self._gave_up is not None or self._stopping():
                    op.close()
                    run = self.ledger.run(run_id)
                    return self._stopped_while_planning(run_id, run)
                self.ledger.set_status(run_id, "failed", {"error": str(exc)})
                op.close()
                raise
        self.ledger.set_status(run_id, "ready")
        unit, planned = self._planned(op, run_id, added)
        log.info("run %s: %s planned", run_id, plural(planned, singular_of(unit)))
        if plan_only:
            op.close()
            run = self.ledger.run(run_id)
            return RunResult(run_id, run.status, run.counts, run.bytes, 0.0)
        return self.execute(op, run_id)

    def _planned(self, op: Operation, run_id: str, added: int) -> tuple[str, int]:
        """What planning gave, in what people count: the operation's units (roster rows), else its
        items in its own word ("files")."""
        units = _units_of(op)
        if units is None:
            return op.unit, added
        return units.name, sum(units.counts(self.ledger.tally(run_id)).values())

    def _wait_out_outages(self) -> bool:
        """Block until every remote answers again (True), or until stopped or given up (False)."""
        while self.outages:
            if self._give_up_if_expired() or self._sleep(0.5):
                return False
            self.outages.poll()
        return True

    def _give_up_if_expired(self) -> bool:
        outage = self.outages.expired()
        if outage is None:
            return False
        if self._gave_up is None:
            self._gave_up = self.outages.gave_up(outage, "; everything not done is still pending")
            log.error("%s", self._gave_up)
        self.halted.set()
        return True

    def _stopping(self) -> bool:
        return self.stop.is_set() or self.halted.is_set()

    def _sleep(self, seconds: float) -> bool:
        """Wait SECONDS unless stopped first; True when stopped."""
        deadline = time.monotonic() + seconds
        while not self._stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.stop.wait(min(left, 0.1))
        return True

    def _stopped_while_planning(self, run_id: str, run: RunInfo) -> RunResult:
        summary: dict[str, Any] = {**summarize(run)}
        if self._gave_up is not None:
            summary["error"] = str(self._gave_up)
        self.ledger.set_status(run_id, "planning", summary)  # resume plans again
        return self._finished(
            RunResult(
                run_id,
                "stopped",
                run.counts,
                run.bytes,
                0.0,
                self._gave_up,
                gave_up=self._gave_up is not None,
            )
        )

    # -- events ---------------------------------------------------------------------------------

    @contextmanager
    def _publishing_outages(self, run_id: str) -> Iterator[None]:
        """While working RUN_ID: remotes that go down or answer again become its RUN_WAITING and
        RUN_GOING_ON events, starting with those down already (a follower's or worker's shared view)."""
        if self._run_id is not None:  # start or resume, then execute: listening already
            yield
            return
        self._run_id = run_id
        stop_listening, down = self.outages.listen(self._outage_changed)
        try:
            for outage in down:
                self._outage_changed(outage, True)
            yield
        finally:
            stop_listening()
            self._run_id = None

    def _outage_changed(self, outage: Outage, down: bool) -> None:
        run_id = self._run_id
        if run_id is None:
            return
        if down:
            self.events.publish(Event.run_waiting(run_id, outage.remote, outage.since, outage.describe()))
        else:
            self.events.publish(
                Event.run_going_on(run_id, outage.remote, outage.since, outage.answers_again())
            )

    def _finished(self, result: RunResult) -> RunResult:
        """Publish RUN_FINISHED for RESULT, and return it."""
        error = result.error
        self.events.publish(
            Event.run_finished(
                result.run_id,
                result.status,
                result.counts,
                result.bytes,
                result.elapsed,
                error=None if error is None else str(error),
                reason=None if error is None else public_text(error),
                gave_up=result.gave_up,
                text=result.waiting,
                nbytes_here=result.bytes_here,
            )
        )
        return result

    # -- the loop -------------------------------------------------------------------------------

    def execute(self, op: Operation, run_id: str) -> RunResult:
        """Work the items of RUN_ID (planned already) until none is left, or stopped."""
        with self._publishing_outages(run_id):
            return self._execute(op, run_id)

    def _execute(self, op: Operation, run_id: str) -> RunResult:
        op.ledger = self.ledger
        op.run_id = run_id
        started = time.monotonic()
        reclaimed = self.ledger.reclaim_dead(run_id)
        if reclaimed:
            log.info("run %s: %s of a stopped process put back", run_id, plural(reclaimed, "item"))
        self.ledger.set_status(run_id, "running")
        run = self.ledger.run(run_id)
        self._bytes_here = 0
        self._first_item = self.ledger.first_item_id(run_id) or 1
        self._units = _units_of(op)
        finished = sum(run.counts.get(s, 0) for s in (DONE, SKIPPED, FAILED))
        unit, unit_counts = self._unit_counts(run_id, run.counts)
        self.events.publish(
            Event.run_started(
                run_id,
                op.name,
                run.total,
                finished,
                unit=unit,
                unit_total=sum(unit_counts.values()),
                unit_finished=sum(unit_counts.get(s, 0) for s in (DONE, SKIPPED, FAILED)),
            )
        )
        work: queue.Queue[Item | None] = queue.Queue()
        threads = [
            threading.Thread(
                target=self._worker_loop, args=(op, work), name=f"pacsflow-worker-{n}", daemon=True
            )
            for n in range(op.threads(self.workers))
        ]
        for thread in threads:
            thread.start()
        try:
            self._dispatch(op, run_id, work)
        except Exception:  # the ledger itself failed: stop cleanly, say so, keep the items for resume
            log.exception("run %s: the ledger failed; stopping", run_id)
            self._fatal = self._fatal or PacsflowError("the ledger database failed; see the log")
            self.halted.set()
        finally:
            self._shutdown(work, threads)
        try:
            result = self._conclude(op, run_id, time.monotonic() - started)
        except BaseException as exc:  # subscribers still learn that this process stopped working the run
            error = (
                exc if isinstance(exc, PacsflowError) else PacsflowError(f"stopped by {type(exc).__name__}")
            )
            self._finished(
                RunResult(
                    run_id,
                    "stopped",
                    {},
                    0,
                    time.monotonic() - started,
                    self._fatal or error,
                    bytes_here=self._bytes_here,
                )
            )
            raise
        return self._finished(result)

    def _dispatch(self, op: Operation, run_id: str, work: queue.Queue[Item | None]) -> None:
        """The only thread that writes to the ledger: one transaction per cycle records what the workers
        finished and claims what they do next."""
        last_renew = last_write = time.monotonic()
        waiting_logged = False
        while True:
            if self._stopping():
                return
            if self.window is not None and not self.window.is_open():
                self._give_back_queued(work)  # nothing new starts outside the window
                self._flush()
                self.ledger.renew_leases(self.worker_id, self.lease_seconds)  # items still finishing
                if not waiting_logged:
                    until = self.window.next_open()
                    text = f"outside time window {self.window}: waiting until {until}"
                    log.info("%s", text)
                    self.events.publish(Event.run_outside_window(run_id, until.timestamp(), text))
                    waiting_logged = True
                self._sleep(5.0)
                continue
            if waiting_logged:
                self.events.publish(
                    Event.run_going_on(run_id, None, None, f"inside time window {self.window}")
                )
                waiting_logged = False
            if time.monotonic() - last_renew > self.lease_seconds / 3:
                self.ledger.renew_leases(self.worker_id, self.lease_seconds)
                last_renew = time.monotonic()
            if self.outages:
                self.outages.poll()
                if self._give_up_if_expired():
                    return
                if not op.remotes_per_item:
                    # every item needs the remote that is down: claim nothing, record what finishes
                    self._flush()
                    if self.leave_when_waiting and self._outstanding == 0:
                        return
                    self._sleep(0.5)
                    continue
            # Work flows in batches: a claim when fewer than one item per worker is queued, taking up
            # to four per worker in all (at most that many to redo if this process dies), and the
            # outcomes written with it. One transaction per batch, not per item.
            queued = work.qsize()
            if queued >= self.workers and self._results.qsize() < 4 * self.workers and self._outstanding:
                self._wake.wait(0.5)
                self._wake.clear()
                if work.qsize() >= self.workers and time.monotonic() - last_write < 0.5:
                    continue
            records = self._drain()
            held = self._outstanding - len(records)
            limit = max(0, 4 * self.workers - held)
            claimed, exhausted = self.ledger.exchange(
                run_id, self.worker_id, records, limit, self.lease_seconds, self.retry.max_attempts
            )
            last_write = time.monotonic()
            self._account(records, claimed)
            if records or claimed:
                log.debug(
                    "run %s: %s recorded, %s claimed (%d outstanding here)",
                    run_id, plural(len(records), "outcome"), plural(len(claimed), "item"), self._outstanding,
                )  # fmt: skip
            if exhausted:
                log.error(
                    "run %s: %s failed: their attempts never reported back", run_id, plural(exhausted, "item")
                )
                note = exhausted_note(self.retry.max_attempts)
                self.events.publish(
                    Event.item_failed(
                        run_id,
                        None,
                        None,
                        None,
                        note=note,
                        reason=note,
                        count=exhausted,
                        # which kinds they were is not known here: a run counting rows counts none of them
                        units=exhausted if self._units is None else 0,
                    )
                )
            for item in claimed:
                work.put(item)
            if claimed:
                continue
            if self._outstanding == 0:
                counts, _ = self.ledger.counts(run_id)
                if counts.get(PENDING, 0) + counts.get(RUNNING, 0) == 0:
                    return
                if self.leave_when_waiting and self.outages:
                    return  # what is left waits for a remote that is down: the caller comes back later
                # Items wait for a retry time, or other processes hold them: look again soon.
                next_retry = self.ledger.next_retry_at(run_id) or 0.0
                self._sleep(min(1.0, max(0.05, next_retry - time.time())))
            else:
                self._wake.wait(0.2)
                self._wake.clear()

    def _give_back_queued(self, work: queue.Queue[Item | None]) -> None:
        for item in _take_all(work):
            if item is not None:
                self._results.put(Record(item, status=PENDING, unstarted=True))

    def _drain(self) -> list[Record]:
        return _take_all(self._results)

    def _account(self, records: list[Record], claimed: list[Item]) -> None:
        """Item events for what was recorded (in the dispatcher thread, in the order recorded);
        outstanding = claimed and not yet recorded."""
        self._outstanding += len(claimed) - len(records)
        publish = self.events.publish
        units = self._units
        for record in records:
            item, status = record.item, record.status
            number = self._number(item)
            if status in (DONE, SKIPPED):
                self._bytes_here += record.nbytes
                if record.children:
                    if units is None:
                        added = len(record.children)
                        settled = sum(1 for child in record.children if child.status != PENDING)
                    else:
                        added, settled = units.added(item.kind, status, record.note, record.children)
                    publish(
                        Event.items_added(
                            item.run_id,
                            item.id,
                            item.kind,
                            len(record.children),
                            number=number,
                            units=added,
                            settled=settled,
                        )
                    )
                publish(
                    Event.item_done(
                        item.run_id,
                        item.id,
                        item.kind,
                        item.key,
                        status,
                        record.nbytes,
                        record.note,
                        number=number,
                        units=1
                        if units is None
                        else units.finishes(item.kind, status, record.note, opened=bool(record.children)),
                    )
                )
            elif status == FAILED:
                reason = self._reasons.pop(item.id, None)
                publish(
                    Event.item_failed(
                        item.run_id,
                        item.id,
                        item.kind,
                        item.key,
                        note=record.note,
                        reason=reason,
                        attempts=item.attempts,
                        number=number,
                        units=1 if units is None else units.finishes(item.kind, FAILED),
                    )
                )
            elif not record.unstarted and record.note is not None:  # pending again: tried later
                publish(
                    Event.item_retry(
                        item.run_id,
                        item.id,
                        item.kind,
                        item.key,
                        note=record.note,
                        reason=self._reasons.pop(item.id, None),
                        attempts=item.attempts,
                        retry_at=record.retry_at,
                        number=number,
                    )
                )

    def _flush(self) -> None:
        """Write the outcomes the workers reported."""
        records = self._drain()
        if records:
            self.ledger.record(records, self.worker_id)
            self._account(records, [])

    def _shutdown(self, work: queue.Queue[Item | None], threads: list[threading.Thread]) -> None:
        unstarted = [item for item in _take_all(work) if item is not None]
        for _ in threads:
            work.put(None)
        for thread in threads:
            thread.join()
        self._flush()  # what the workers finished while stopping
        self.ledger.release(unstarted, self.worker_id)
        self._outstanding -= len(unstarted)

    def _worker_loop(self, op: Operation, work: queue.Queue[Item | None]) -> None:
        while True:
            item = work.get()
            if item is None:
                return
            try:
                if self._stopping():
                    record = Record(item, status=PENDING, unstarted=True)
                else:
                    record = self._work(op, item)
            except Exception:  # never let a worker die silently
                log.exception("worker error on item #%d", item.id)
                self._fatal = self._fatal or PacsflowError("internal error in a worker; see the log")
                self.halted.set()
                record = Record(item, status=PENDING, unstarted=True)
            self._results.put(record)
            self._wake.set()

    def _work(self, op: Operation, item: Item) -> Record:
        if self.outages.blocks(op.item_remotes(item)):
            return self._wait_for_remote(op, item)
        started = time.perf_counter()
        try:
            outcome = op.do(item)
            if log.isEnabledFor(logging.DEBUG):
                elapsed = (time.perf_counter() - started) * 1000
                what = self._describe(item)
                log.debug("%s: %s in %.0f ms (attempt %d)", what, outcome.status, elapsed, item.attempts)
        except PacsflowError as exc:
            return self._on_error(op, item, exc)
        except Exception as exc:
            log.debug("item #%d raised", item.id, exc_info=True)
            return self._on_error(
                op, item, PacsflowError(f"unexpected {type(exc).__name__}", detail=str(exc))
            )
        return Record(
            item,
            status=outcome.status,
            nbytes=outcome.nbytes,
            result=outcome.result,
            note=outcome.note,
            children=outcome.children,
        )

    def _wait_for_remote(self, op: Operation, item: Item) -> Record:
        """Back to pending, not counted as an attempt, until the next look at the remote that is down."""
        wait = self.outages.seconds_to_next_probe(op.item_remotes(item))
        return Record(item, status=PENDING, unstarted=True, retry_at=time.time() + wait)

    def _on_error(self, op: Operation, item: Item, exc: PacsflowError) -> Record:
        where = self._describe(item)
        if self.outages.confirm(exc):
            return self._wait_for_remote(op, item)
        self._reasons[item.id] = public_text(exc)  # for events; the ledger keeps str(exc)
        if exc.fatal:
            if self._fatal is None:
                self._fatal = exc
                log.error("stopping: %s", self._loggable(exc))
            self.halted.set()
            # the run stops for a reason that is not this item's: its claim spends none of its attempts
            return Record(item, status=PENDING, note=str(exc), retry_at=time.time(), unstarted=True)
        if exc.transient and self.retry.should_retry(item.attempts):
            delay = self.retry.delay(item.attempts)
            log.warning(
                "%s: %s (attempt %d, retry in %.0fs)", where, self._loggable(exc), item.attempts, delay
            )
            return Record(item, status=PENDING, note=str(exc), retry_at=time.time() + delay)
        log.error("%s failed: %s", where, self._loggable(exc))
        return Record(item, status=FAILED, note=str(exc), result=exc.result, nbytes=exc.nbytes)

    def _loggable(self, exc: PacsflowError) -> str:
        """The error for a log line: without file names or IDs unless PHI may be logged."""
        return public_text(exc, self.log_phi)

    def _describe(self, item: Item) -> str:
        """How logs name an item: its number in the run (a roster row: its line), and its key only when
        PHI may be logged; `pacsflow run show` names it the same way."""
        label = item_label(item.kind, self._number(item), item.key)
        return f"{label} {item.key}" if self.log_phi else label

    def _number(self, item: Item) -> int:
        """ITEM's number within its run, counted from 1 (the ledger's ids run on across all runs)."""
        return item.id - self._first_item + 1

    def _unit_counts(self, run_id: str, counts: dict[str, int]) -> tuple[str, dict[str, int]]:
        """What progress counts in RUN_ID, and how many of them ended how: the operation's units
        (roster rows) from the ledger's tally, or else the run's item COUNTS."""
        if self._units is None:
            return "items", counts
        return self._units.name, self._units.counts(self.ledger.tally(run_id))

    def _conclude(self, op: Operation, run_id: str, elapsed: float) -> RunResult:
        lines: list[str] = []
        try:
            run = self.ledger.run(run_id)
            if self._fatal is not None or self._gave_up is not None or self._stopping():
                status = "stopped"
            elif run.remaining:
                status = "running"  # other processes still hold items
            else:
                status = "failed" if run.counts.get(FAILED) else "done"
                lines = op.finish(run)
                run = self.ledger.run(run_id)
                status = "failed" if run.counts.get(FAILED) else "done"
            summary: dict[str, Any] = {**summarize(run), "elapsed": round(elapsed, 3)}
            error = self._fatal or self._gave_up
            if error is not None:
                summary["error"] = str(error)
            self.ledger.set_status(run_id, status, summary)
            unit, unit_counts = self._unit_counts(run_id, run.counts)
        finally:
            op.close()
        return RunResult(
            run_id,
            status,
            run.counts,
            run.bytes,
            elapsed,
            self._fatal or self._gave_up,
            lines,
            gave_up=self._gave_up is not None,
            waiting=self.outages.describe() if status == "running" else None,
            bytes_here=self._bytes_here,
            unit=unit,
            unit_counts=None if self._units is None else unit_counts,
        )


def _take_all(source: queue.Queue[T]) -> list[T]:
    """Everything in a queue right now, without waiting."""
    taken: list[T] = []
    while True:
        try:
            taken.append(source.get_nowait())
        except queue.Empty:
            return taken


def _units_of(op: Operation) -> Units | None:
    """The operation's own units of progress (`units = Units("rows", ...)` on its class), if any."""
    units = getattr(op, "units", None)  # optional: most operations count their items
    return units if isinstance(units, Units) else None


def describe_run(run: RunInfo, status: str | None = None) -> str:
    """One line for a run: id, when, operation, status (STATUS: as shown, e.g. 'interrupted' for a run
    whose process is gone, see Ledger.shown_status), item counts."""
    counts = ", ".join(
        f"{run.counts[s]} {s}" for s in (DONE, SKIPPED, FAILED, PENDING, RUNNING) if run.counts.get(s)
    )
    when = datetime.fromtimestamp(run.created_at).strftime("%Y-%m-%d %H:%M")
    return f"{run.id}  {when}  {run.operation:<14} {status or run.status:<11} {counts or 'no items'}"
