"""Following an Orthanc's change feed: each new instance becomes an item of a long-lived clone run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pacsflow.engine import DEFAULT_GIVE_UP_AFTER, Engine, RunResult
from pacsflow.errors import PacsflowError
from pacsflow.ledger import PENDING, RUNNING, Ledger, PlannedItem
from pacsflow.ops.base import Operation
from pacsflow.orthanc import Orthanc
from pacsflow.outages import Outages
from pacsflow.pacing import TimeWindow

log = logging.getLogger("pacsflow")
CHECKPOINT = "changes"
PAGE = 1000


def last_change(source: Orthanc) -> int:
    """The sequence number of the source's newest change (0 for a new server)."""
    return int(source.get_json("/changes", last="").get("Last", 0))


class ChangeFollower:
    """Reads /changes from the run's checkpoint, turns each change of CHANGE_TYPE into items, works them,
    and moves the checkpoint only past changes whose items are finished: a crash re-reads from there."""

    def __init__(
        self,
        ledger: Ledger,
        run_id: str,
        make_operation: Callable[[], Operation],
        make_engine: Callable[..., Engine],
        source: Orthanc,
        stop: threading.Event,
        *,
        poll: float = 2.0,
        window: TimeWindow | None = None,
        items: Callable[[dict[str, Any]], list[PlannedItem]],
        change_type: str = "NewInstance",
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
        on_cycle: Callable[[RunResult], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.make_operation = make_operation
        self.make_engine = make_engine
        self.source = source
        self.stop = stop
        self.poll = poll
        self.window = window
        self.items = items
        self.change_type = change_type
        self.outages = Outages(give_up_after)
        #: told how each cycle of work ended (heartbeats: a long follow says it is alive)
        self.on_cycle = on_cycle or (lambda _result: None)

    def checkpoint(self) -> int:
        return int(self.ledger.checkpoint(self.run_id, CHECKPOINT) or 0)

    def run(self) -> None:
        """Until stopped: one page of changes at a time.

        The feed is read ahead of the checkpoint: while items wait (for a destination that is down, or
        held by another process), new changes still become items, so other destinations go on getting
        new studies. The checkpoint moves only when every item so far is finished.
        """
        read_upto = self.checkpoint()
        while not self.stop.is_set():
            if self.window is not None and not self.window.is_open():
                self.stop.wait(30.0)
                continue
            try:
                page = self.source.get_json("/changes", since=read_upto, limit=PAGE)
            except PacsflowError as exc:
                if exc.fatal:
                    raise
                if self.outages.confirm(exc):  # the source is down: wait for it as a run would
                    self._wait_for_source()
                    continue
                log.warning("change feed: %s; trying again", exc.reason)
                self.stop.wait(max(self.poll, 5.0))
                continue
            new = [
                item
                for change in page.get("Changes", [])
                if change.get("ChangeType") == self.change_type
                for item in self.items(change)
            ]
            if new:
                self.ledger.add_items(self.run_id, new)
            read_upto = max(read_upto, int(page.get("Last", read_upto)))
            if new or self._unfinished():
                engine = self.make_engine(outages=self.outages, leave_when_waiting=True)
                result = engine.execute(self.make_operation(), self.run_id)
                if result.error is not None:
                    # The engine halted the run (forward found a destination to be the source, a remote
                    # stayed down longer than give_up_after): the command fails with the reason, exit
                    # status 2 when fatal and 1 otherwise, rather than ending as if asked to stop.
                    raise result.error
                if result.status == "stopped":
                    return
                self.on_cycle(result)
            if not self._unfinished() and read_upto > self.checkpoint():
                self.ledger.set_checkpoint(self.run_id, CHECKPOINT, str(read_upto))
            if page.get("Done", True):
                self.stop.wait(self.poll)

    def _wait_for_source(self) -> None:
        """Until the source answers again or we are stopped; give up (exit 1) after give_up_after."""
        while self.outages and not self.stop.is_set():
            outage = self.outages.expired()
            if outage is not None:
                raise self.outages.gave_up(outage)
            self.outages.poll()
            self.stop.wait(0.5)

    def _unfinished(self) -> bool:
        counts, _ = self.ledger.counts(self.run_id)
        return bool(counts.get(PENDING, 0) + counts.get(RUNNING, 0))
