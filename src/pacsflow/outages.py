"""Remotes that stopped answering: since when, probing them with backoff, and when a run gives up on one."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from pacsflow.errors import PacsflowError, Unreachable

log = logging.getLogger("pacsflow")

#: first probe this long after a remote went down, then twice as long each time, up to MAX_PROBE_DELAY
FIRST_PROBE_DELAY = 2.0
MAX_PROBE_DELAY = 30.0
#: while a remote stays down, say so again this often
REMINDER_EVERY = 300.0


@dataclass
class Outage:
    """One remote that does not answer."""

    remote: str
    probe: Callable[[], object]
    since: float  # wall clock, for people
    started: float  # monotonic, for arithmetic
    next_probe: float  # monotonic
    delay: float
    probing: bool = False
    reminded: float = 0.0

    def describe(self) -> str:
        return f"waiting for {self.remote} (down since {datetime.fromtimestamp(self.since):%H:%M})"

    def answers_again(self) -> str:
        return f"{self.remote} answers again after {human_seconds(time.monotonic() - self.started)}"


#: told of a remote that went down (True) or answers again (False)
OutageListener = Callable[[Outage, bool], None]


def human_seconds(seconds: float) -> str:
    """3600 -> '1h', 90 -> '1m30s', 45 -> '45s'."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


class Outages:
    """The remotes a run is waiting for. Workers report failures; the dispatcher polls probes.

    A remote counts as down only when its own probe fails right after an item failed to reach it: an
    item that times out on a server that answers `GET /system` at once is that item's problem (it
    spends a retry), not an outage (which spends none).
    """

    def __init__(self, give_up_after: float) -> None:
        self.give_up_after = give_up_after
        self._down: dict[str, Outage] = {}
        self._listeners: tuple[OutageListener, ...] = ()
        self._lock = threading.Lock()

    def listen(self, listener: OutageListener) -> tuple[Callable[[], None], list[Outage]]:
        """Call LISTENER(outage, down) when a remote goes down (True) and when it answers again (False),
        from the thread that notices. Returns a function that stops it, and the remotes down right now:
        each change comes either in that list or to the listener, never both, never neither."""

        def stop() -> None:
            with self._lock:
                self._listeners = tuple(known for known in self._listeners if known is not listener)

        with self._lock:
            self._listeners = (*self._listeners, listener)
            return stop, list(self._down.values())

    def _tell(self, listeners: tuple[OutageListener, ...], outage: Outage, down: bool) -> None:
        for listener in listeners:
            try:
                listener(outage, down)
            except Exception:  # a listener must not break probing or a worker
                log.exception("an outage listener failed")

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._down)

    def confirm(self, exc: PacsflowError) -> bool:
        """After an item failed with EXC: True when its remote is down (known already, or probed now)."""
        if not isinstance(exc, Unreachable) or exc.remote is None or exc.probe is None:
            return False
        with self._lock:
            if exc.remote in self._down:
                return True
        try:
            exc.probe()
        except PacsflowError as failure:
            if not failure.transient:
                return False  # it answers, but refuses (a changed password, say): not an outage
        else:
            return False  # it answers: the failure was this item's own
        self._register(exc.remote, exc.probe, exc.reason)
        return True

    def _register(self, remote: str, probe: Callable[[], object], reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            if remote in self._down:
                return
            outage = Outage(remote, probe, time.time(), now, now + FIRST_PROBE_DELAY, FIRST_PROBE_DELAY)
            outage.reminded = now
            self._down[remote] = outage
            listeners = self._listeners
        log.warning(
            "%s: %s; nothing more is sent to it until it answers (giving up after %s)",
            outage.describe(),
            reason,
            human_seconds(self.give_up_after),
        )
        self._tell(listeners, outage, True)

    def blocks(self, remotes: Collection[str] | None) -> bool:
        """True when an item that needs REMOTES (None: every remote of the run) must wait."""
        with self._lock:
            if remotes is None:
                return bool(self._down)
            return any(remote in self._down for remote in remotes)

    def seconds_to_next_probe(self, remotes: Collection[str] | None = None) -> float:
        """How long an item that needs REMOTES (None: any) should wait before it is claimed again: until
        the next probe of the first of them (a probe under way counts its whole delay), and never under
        a second, so that items held back do not go round between the ledger and the workers."""
        now = time.monotonic()
        with self._lock:
            waits = [
                outage.delay if outage.probing else outage.next_probe - now
                for outage in self._down.values()
                if remotes is None or outage.remote in remotes
            ]
        return max(1.0, min(waits)) if waits else 0.0

    def poll(self) -> None:
        """Start a probe of each remote whose turn has come (in its own thread: a probe may hang until
        its timeout, and other remotes' work must not wait for it); remind the log now and then."""
        now = time.monotonic()
        with self._lock:
            due = [o for o in self._down.values() if not o.probing and o.next_probe <= now]
            for outage in due:
                outage.probing = True
            reminders = [o for o in self._down.values() if now - o.reminded >= REMINDER_EVERY]
            for outage in reminders:
                outage.reminded = now
        for outage in reminders:
            log.warning("still %s", outage.describe())
        for outage in due:
            threading.Thread(target=self._probe, args=(outage,), daemon=True, name="pacsflow-probe").start()

    def _probe(self, outage: Outage) -> None:
        try:
            outage.probe()
        except PacsflowError:
            with self._lock:
                outage.delay = min(MAX_PROBE_DELAY, outage.delay * 2)
                outage.next_probe = time.monotonic() + outage.delay
                outage.probing = False
            return
        except Exception:  # a probe must never kill its thread silently
            log.exception("probing %s failed unexpectedly", outage.remote)
            with self._lock:
                outage.next_probe = time.monotonic() + outage.delay
                outage.probing = False
            return
        with self._lock:
            self._down.pop(outage.remote, None)
            listeners = self._listeners
        log.warning("%s; going on", outage.answers_again())
        self._tell(listeners, outage, False)

    def expired(self) -> Outage | None:
        """A remote down for longer than the run may wait, if any."""
        now = time.monotonic()
        with self._lock:
            for outage in self._down.values():
                if now - outage.started > self.give_up_after:
                    return outage
        return None

    def gave_up(self, outage: Outage, then: str = "") -> PacsflowError:
        """The error a run or a follower stops with when OUTAGE lasted longer than it may wait."""
        since = datetime.fromtimestamp(outage.since)
        return PacsflowError(
            f"gave up: {outage.remote} has not answered since {since:%Y-%m-%d %H:%M} "
            f"(longer than --give-up-after {human_seconds(self.give_up_after)}){then}"
        )

    def describe(self) -> str | None:
        """'waiting for NAME (down since HH:MM)', for every remote down; None when all answer."""
        with self._lock:
            texts = [outage.describe() for outage in self._down.values()]
        return "; ".join(texts) or None
