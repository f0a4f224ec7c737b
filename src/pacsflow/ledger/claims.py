"""Claiming and recording items: one transaction per engine cycle, leases, dead workers, exhausted items."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import JSON, BigInteger, Engine, Float, Integer, String, Text, bindparam, func, select, update
from sqlalchemy.engine import Connection

from pacsflow.ledger.model import Item, PlannedItem, Record, item_from_row, storable
from pacsflow.ledger.schema import DONE, FAILED, PENDING, RUNNING, items
from pacsflow.wording import plural

#: above every phase an item can have: no unscoped item holds scoped ones back
_NO_PHASE = 2**31 - 1


class _Statements:
    """The hot statements, built once with bound parameters, so SQLAlchemy compiles them once."""

    def __init__(self) -> None:
        q = bindparam
        self.min_phase = select(func.min(items.c.phase)).where(
            items.c.run_id == q("q_run"), items.c.status == q("q_status")
        )

        def ids(status: str, ready: Any) -> Any:
            return (
                select(items.c.id)
                .where(
                    items.c.run_id == q("q_run"),
                    items.c.status == status,
                    items.c.phase == q("q_phase"),
                    ready,
                )
                .order_by(items.c.id)
                .limit(q("q_limit", type_=Integer))
                .with_for_update(
                    skip_locked=True
                )  # PostgreSQL: rows another worker is claiming are passed by
            )

        self.pending_ids = ids(PENDING, items.c.not_before <= q("q_now"))
        unfinished = items.c.status.in_((PENDING, RUNNING))
        self.min_unscoped_phase = select(func.min(items.c.phase)).where(
            items.c.run_id == q("q_run"), items.c.scope.is_(None), unfinished
        )
        earlier = items.alias("earlier")

        def scoped_ids(status: str, ready: Any) -> Any:
            # items of a later phase than the run's lowest whose own scope has nothing unfinished before
            # them, and no unscoped item of an earlier phase is unfinished (q_below: that phase, or more
            # than any)
            waiting = (
                select(earlier.c.id)
                .where(
                    earlier.c.run_id == items.c.run_id,
                    earlier.c.scope == items.c.scope,
                    earlier.c.status.in_((PENDING, RUNNING)),
                    earlier.c.phase < items.c.phase,
                )
                .exists()
            )
            return (
                select(items.c.id)
                .where(
                    items.c.run_id == q("q_run"),
                    items.c.status == status,
                    items.c.scope.is_not(None),
                    items.c.phase > q("q_phase"),
                    items.c.phase <= q("q_below"),
                    ready,
                    ~waiting,
                )
                # the claim index's order (phase, id): no sort of every waiting item on each claim
                .order_by(items.c.phase, items.c.id)
                .limit(q("q_limit", type_=Integer))
                .with_for_update(skip_locked=True)
            )

        self.scoped_pending_ids = scoped_ids(PENDING, items.c.not_before <= q("q_now"))
        self.scoped_stale_ids = scoped_ids(RUNNING, items.c.lease_until < q("q_now"))
        self.run_lock = select(func.pg_advisory_xact_lock(func.hashtext(q("q_run", type_=String))))
        self.stale_ids = ids(RUNNING, items.c.lease_until < q("q_now"))
        self.take = (
            update(items)
            .where(items.c.id.in_(q("q_ids", expanding=True)))
            .values(
                status=RUNNING,
                worker=q("q_worker"),
                lease_until=q("q_lease"),
                attempts=items.c.attempts + 1,
                started_at=q("q_now"),
            )
            .returning(*items.c)
        )
        held = (items.c.id == q("q_id"), items.c.worker == q("q_worker"), items.c.status == RUNNING)
        self.finish = (
            update(items)
            .where(*held)
            .values(
                status=q("q_status"),
                lease_until=None,
                finished_at=q("q_now"),
                last_error=q("q_note", type_=Text),
                bytes=q("q_bytes", type_=BigInteger),
                result=q("q_result", type_=JSON),
            )
        )
        retry_values = {
            "status": PENDING,
            "lease_until": None,
            "not_before": q("q_at", type_=Float),
            "last_error": func.coalesce(q("q_note", type_=Text), items.c.last_error),
        }
        self.retry = update(items).where(*held).values(**retry_values)
        self.exhaust = (
            update(items)
            .where(items.c.id == q("q_id"))
            .values(
                status=FAILED, lease_until=None, finished_at=q("q_now"), last_error=q("q_note", type_=Text)
            )
        )
        self.db_now = select(func.extract("epoch", func.clock_timestamp()))
        self.give_back = update(items).where(*held).values(**retry_values, attempts=items.c.attempts - 1)


def exhausted_note(attempts: int) -> str:
    return (
        f"gave up after {plural(attempts, 'attempt')} that never reported back "
        "(the process working on it died: killed, out of memory?)"
    )


def new_worker_id() -> str:
    """hostname:pid:random: lets a process on the same host tell whether the worker is still alive."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def worker_is_dead(worker: str) -> bool:
    """True only when the worker (host:pid:...) ran on this host and its process is gone."""
    try:
        host, pid_text, _ = worker.split(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class Claims:
    """The Ledger's writing side for items: what the engine calls every cycle (the hot path)."""

    engine: Engine
    is_postgres: bool
    _stale_checked: dict[str, float]
    _insert_ignore: Any
    _write: Callable[[], AbstractContextManager[Connection]]

    def add_items(self, run_id: str, planned: Iterable[PlannedItem], chunk: int = 1000) -> int:
        """Insert items, ignoring keys the run already has (so planning twice is harmless)."""
        added = 0
        batch: list[PlannedItem] = []
        for item in planned:
            batch.append(item)
            if len(batch) >= chunk:
                added += self._insert(run_id, batch)
                batch = []
        if batch:
            added += self._insert(run_id, batch)
        return added

    def _insert(self, run_id: str, batch: Sequence[PlannedItem], conn: Any = None) -> int:
        if not batch:
            return 0
        now = time.time()
        rows = [
            {
                "run_id": run_id,
                "phase": item.phase,
                "scope": item.scope,
                "kind": item.kind,
                "key": storable(item.key),
                "payload": item.payload,
                "status": item.status,
                "last_error": item.note,
                "result": item.result,
                "attempts": 0,
                "bytes": item.nbytes,
                "not_before": 0.0,
                "created_at": now,
                "finished_at": None if item.status == PENDING else now,
            }
            for item in {item.key: item for item in batch}.values()
        ]
        # executemany of one prepared statement: compiling a 1000-row VALUES list costs more than the insert
        if conn is not None:
            return max(0, conn.execute(self._insert_ignore, rows).rowcount or 0)
        with self._write() as own:
            return max(0, own.execute(self._insert_ignore, rows).rowcount or 0)

    def resettle(self, run_id: str, settled: Sequence[PlannedItem]) -> int:
        """Overwrite the outcome of items the run already has (by key) with SETTLED's: work done again
        outside the engine (an instance a storage SCP received twice) counts as it went last time."""
        if not settled:
            return 0
        now = time.time()
        statement = (
            update(items)
            .where(items.c.run_id == run_id, items.c.key == bindparam("q_key"))
            .values(
                status=bindparam("q_status"),
                last_error=bindparam("q_note", type_=Text),
                result=bindparam("q_result", type_=JSON),
                bytes=bindparam("q_bytes", type_=BigInteger),
                attempts=items.c.attempts + 1,
                finished_at=now,
            )
        )
        rows = [
            {
                "q_key": storable(item.key),
                "q_status": item.status,
                "q_note": item.note,
                "q_result": item.result,
                "q_bytes": item.nbytes,
            }
            for item in settled
        ]
        with self._write() as conn:
            return max(0, conn.execute(statement, rows).rowcount or 0)

    def claim(
        self, run_id: str, worker: str, limit: int, lease_seconds: float, max_attempts: int | None = None
    ) -> list[Item]:
        """Atomically take up to LIMIT runnable items of the run's lowest unfinished phase."""
        return self.exchange(run_id, worker, [], limit, lease_seconds, max_attempts)[0]

    def exchange(
        self,
        run_id: str,
        worker: str,
        records: Sequence[Record],
        limit: int,
        lease_seconds: float,
        max_attempts: int | None = None,
    ) -> tuple[list[Item], int]:
        """Record outcomes and claim more items in one transaction (the engine's one write per cycle).

        Returns the items claimed and how many claimed items were failed instead because their attempts
        ran out (see `_claim`).
        """
        with self._write() as conn:
            now = self._now(conn)
            self._record(conn, records, worker, now)
            if limit <= 0:
                return [], 0
            return self._claim(conn, run_id, worker, limit, lease_seconds, now, max_attempts)

    def _now(self, conn: Connection) -> float:
        """The time leases and retry times are measured in: the database's clock on PostgreSQL, so
        that machines whose clocks disagree can never see another's lease as expired too early."""
        if self.is_postgres:
            return float(conn.execute(_SQL.db_now).scalar())
        return time.time()

    def _claim(
        self,
        conn: Connection,
        run_id: str,
        worker: str,
        limit: int,
        lease_seconds: float,
        now: float,
        max_attempts: int | None,
    ) -> tuple[list[Item], int]:
        # Every query is an index seek on (run_id, status, phase, id), so claiming stays cheap however
        # many items a run has finished. Running items are looked at before pending ones: an item goes
        # from running to done-with-pending-children (or back to pending) in one commit, so even with
        # PostgreSQL's per-statement snapshots a claim sees it in one form or the other and never
        # opens a later phase too early. Silent workers' items (expired leases) are looked for every
        # few seconds.
        if self.is_postgres:  # one claim per run at a time across all processes
            conn.execute(_SQL.run_lock, {"q_run": run_id})
        phases = [
            conn.execute(_SQL.min_phase, {"q_run": run_id, "q_status": status}).scalar()
            for status in (RUNNING, PENDING)
        ]
        open_phases = [found for found in phases if found is not None]
        if not open_phases:
            return [], 0
        lowest = min(open_phases)
        where = {"q_run": run_id, "q_phase": lowest, "q_now": now, "q_limit": limit}
        ids = list(conn.execute(_SQL.pending_ids, where).scalars())
        # Scoped items of later phases: each waits only for its own scope (a patient's ZIP once that
        # patient's files are in) and for unscoped items of earlier phases.
        unscoped = conn.execute(_SQL.min_unscoped_phase, {"q_run": run_id}).scalar()
        scoped = {**where, "q_below": _NO_PHASE if unscoped is None else unscoped}
        # a scope's later steps before the lowest phase's items: what is started gets finished (a
        # patient's series retrieved, then its ZIP) before the next scope starts, one patient after the
        # other rather than all abreast; the lowest phase (finding more patients) takes the workers
        # the started scopes leave idle. Children are made after their parents, so "oldest first"
        # would list every patient before retrieving any.
        later = list(conn.execute(_SQL.scoped_pending_ids, scoped).scalars())
        ids = (later + [found for found in ids if found not in set(later)])[:limit]
        if len(ids) < limit and now - self._stale_checked.get(run_id, 0.0) > 5.0:
            self._stale_checked[run_id] = now
            ids += conn.execute(_SQL.stale_ids, {**where, "q_limit": limit - len(ids)}).scalars()
            if len(ids) < limit:
                ids += conn.execute(_SQL.scoped_stale_ids, {**scoped, "q_limit": limit - len(ids)}).scalars()
        if not ids:
            return [], 0
        rows = conn.execute(
            _SQL.take, {"q_ids": ids, "q_worker": worker, "q_lease": now + lease_seconds, "q_now": now}
        ).all()
        taken = sorted((item_from_row(row) for row in rows), key=lambda item: item.id)
        if max_attempts is None:
            return taken, 0
        # An item whose process died while working it (killed for memory on one huge file, say) never
        # reported back; without this check it would be claimed again, and kill its next process, forever.
        exhausted = [item for item in taken if item.attempts > max_attempts]
        if exhausted:
            conn.execute(
                _SQL.exhaust,
                [
                    {"q_id": item.id, "q_now": now, "q_note": exhausted_note(item.attempts - 1)}
                    for item in exhausted
                ],
            )
        return [item for item in taken if item.attempts <= max_attempts], len(exhausted)

    def complete(
        self,
        item: Item,
        worker: str,
        *,
        status: str = DONE,
        nbytes: int = 0,
        result: dict[str, Any] | None = None,
        note: str | None = None,
        children: Sequence[PlannedItem] = (),
    ) -> bool:
        """Mark one item done or skipped and add its children; False if it is no longer ours."""
        record = Record(item, status=status, nbytes=nbytes, result=result, note=note, children=children)
        return self.record([record], worker) == 1

    def fail(self, item: Item, worker: str, error: str, retry_at: float | None = None) -> bool:
        """Record an error: back to pending after RETRY_AT, or failed for good when RETRY_AT is None."""
        status = FAILED if retry_at is None else PENDING
        return self.record([Record(item, status=status, note=error, retry_at=retry_at)], worker) == 1

    def record(self, records: Sequence[Record], worker: str) -> int:
        """Write many outcomes in one transaction; only items this worker still holds change.

        Returns how many items changed (fewer when a lease ran out and another worker took an item).
        """
        if not records:
            return 0
        with self._write() as conn:
            return self._record(conn, records, worker, self._now(conn))

    def _record(self, conn: Connection, records: Sequence[Record], worker: str, now: float) -> int:
        local_now = time.time()
        finished, retried, given_back = [], [], []
        for record in records:
            params = {
                "q_id": record.item.id,
                "q_worker": worker,
                "q_note": record.note and storable(record.note[:2000]),
            }
            if record.status == PENDING:
                # retry_at is on this machine's clock: keep the delay, measure it on the ledger's clock
                params["q_at"] = now + max(0.0, (record.retry_at or local_now) - local_now)
                (given_back if record.unstarted else retried).append(params)
            else:
                # a failed item keeps what it did before failing (an archive's members sent)
                params.update(
                    q_status=record.status, q_now=now, q_bytes=record.nbytes, q_result=record.result
                )
                finished.append((record, params))
        changed = 0
        plain = [params for record, params in finished if not record.children]
        for statement, batch in ((_SQL.finish, plain), (_SQL.retry, retried), (_SQL.give_back, given_back)):
            if batch:
                changed += max(0, conn.execute(statement, batch).rowcount or 0)
        for record, params in finished:
            # children only for an item we still hold
            if record.children and conn.execute(_SQL.finish, params).rowcount:
                changed += 1
                self._insert(record.item.run_id, record.children, conn)
        return changed

    def release(self, held: Sequence[Item], worker: str) -> None:
        """Give items back untouched (stop requested before they started): not counted as an attempt."""
        if not held:
            return
        with self._write() as conn:
            conn.execute(
                update(items)
                .where(
                    items.c.id.in_([item.id for item in held]),
                    items.c.worker == worker,
                    items.c.status == RUNNING,
                )
                .values(status=PENDING, lease_until=None, attempts=items.c.attempts - 1)
            )

    def renew_leases(self, worker: str, lease_seconds: float) -> None:
        with self._write() as conn:
            conn.execute(
                update(items)
                .where(items.c.worker == worker, items.c.status == RUNNING)
                .values(lease_until=self._now(conn) + lease_seconds)
            )

    def reclaim_dead(self, run_id: str) -> int:
        """Put back the items of workers on this host whose process has died (killed runs)."""
        with self.engine.connect() as conn:
            workers = conn.execute(
                select(items.c.worker).where(items.c.run_id == run_id, items.c.status == RUNNING).distinct()
            ).scalars()
            dead = [worker for worker in workers if worker and worker_is_dead(worker)]
        if not dead:
            return 0
        with self._write() as conn:
            return conn.execute(
                update(items)
                .where(items.c.run_id == run_id, items.c.status == RUNNING, items.c.worker.in_(dead))
                .values(status=PENDING, lease_until=None)
            ).rowcount

    def retry_failed(self, run_id: str) -> int:
        """Failed items back to pending with a fresh attempt count."""
        with self._write() as conn:
            return conn.execute(
                update(items)
                .where(items.c.run_id == run_id, items.c.status == FAILED)
                .values(status=PENDING, attempts=0, not_before=0.0, finished_at=None)
            ).rowcount


_SQL = _Statements()
