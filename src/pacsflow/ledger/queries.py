"""Runs and what the ledger tells of them: headers, counts, items, tallies, earlier results, checkpoints."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Engine, case, func, select, update
from sqlalchemy.engine import Connection

from pacsflow.errors import ConfigError
from pacsflow.ledger.claims import worker_is_dead
from pacsflow.ledger.database import safe_url
from pacsflow.ledger.model import Item, RunInfo, item_from_row, storable
from pacsflow.ledger.schema import DONE, PENDING, RUNNING, SKIPPED, checkpoints, items, runs

#: statuses that say a process works the run right now; `shown_status` checks that one still does
ACTIVE = ("planning", "running")
#: what `shown_status` says of an active run whose processes are all gone (killed, their machine lost)
INTERRUPTED = "interrupted"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def process_owner() -> str:
    """This process as a run's owner: host:pid, as workers' ids begin (see new_worker_id)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_gone(worker: str, lease_until: float | None, now: float) -> bool:
    """Whether WORKER (host:pid[:...]) no longer works its items: on this host, its process is gone; on
    another, its lease (renewed every 20 s while it lives) ran out."""
    if worker.split(":", 1)[0] == socket.gethostname():
        return worker_is_dead(worker if worker.count(":") >= 2 else f"{worker}:")
    return lease_until is not None and lease_until < now


class Queries:
    """The Ledger's runs, reports and checkpoints."""

    url: str
    engine: Engine
    _write: Callable[[], AbstractContextManager[Connection]]
    _now: Callable[[Connection], float]  # the clock leases are on (Claims)

    # -- runs -----------------------------------------------------------------------------------

    def create_run(self, operation: str, params: dict[str, Any], run_id: str | None = None) -> str:
        run_id = run_id or new_run_id()
        now = time.time()
        with self._write() as conn:
            conn.execute(
                runs.insert().values(
                    id=run_id,
                    operation=operation,
                    params=params,
                    status="planning",
                    created_at=now,
                    updated_at=now,
                    # who plans it: a run killed while planning holds no items to tell (shown_status)
                    summary={"owner": process_owner()},
                )
            )
        return run_id

    def set_status(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        """Set the run's STATUS (and SUMMARY). An active status (planning, running) also records this
        process as the run's owner in the summary, for `shown_status` to tell a killed run."""
        now = time.time()
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if status in ("done", "failed"):
            values["finished_at"] = now
        if summary is not None:
            values["summary"] = summary
        with self._write() as conn:
            if status in ACTIVE:
                if summary is None:
                    found = conn.execute(select(runs.c.summary).where(runs.c.id == run_id)).scalar()
                    summary = found if isinstance(found, dict) else {}
                values["summary"] = {**summary, "owner": process_owner()}
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))

    def shown_status(self, run: RunInfo) -> str:
        """RUN's status as people should read it: 'interrupted' for a run that says it is planning or
        running while no process works it any more (killed, or its machine lost), else its status.

        Running items tell who works them: a process on this host is asked directly whether it lives;
        one elsewhere is gone once its lease has run out. A run holding no running items (killed while
        planning, or while its items waited for a retry) is judged by its owner, the process that last
        set it active, when that process ran on this host; otherwise it keeps its status.
        """
        if run.status not in ACTIVE:
            return run.status
        with self.engine.connect() as conn:
            holders = conn.execute(
                select(items.c.worker, func.max(items.c.lease_until))
                .where(items.c.run_id == run.id, items.c.status == RUNNING)
                .group_by(items.c.worker)
            ).all()
            now = self._now(conn)
        owner = (run.summary or {}).get("owner")
        if not (isinstance(owner, str) and owner.split(":", 1)[0] == socket.gethostname()):
            owner = None  # a process elsewhere cannot be asked; its items' leases tell
        if owner is not None and not _owner_gone(owner, None, now):
            return run.status  # its owner lives, though it may hold no item this moment
        if holders:
            gone = all(worker and _owner_gone(worker, lease, now) for worker, lease in holders)
            return INTERRUPTED if gone else run.status
        return INTERRUPTED if owner is not None else run.status

    def first_item_id(self, run_id: str) -> int | None:
        """The id of RUN_ID's first item (None before it has any): people count a run's items from it
        (`file #3`), since ids run on across every run of the ledger. Items are never deleted, so it
        never changes once found; it is looked up once per process."""
        known: dict[str, int] = self.__dict__.setdefault("_first_item_ids", {})
        if run_id not in known:
            with self.engine.connect() as conn:
                found = conn.execute(select(func.min(items.c.id)).where(items.c.run_id == run_id)).scalar()
            if found is None:
                return None
            known[run_id] = int(found)
        return known[run_id]

    def run(self, ref: str) -> RunInfo:
        """A run by ID, unique ID prefix, or 'last'."""
        with self.engine.connect() as conn:
            if ref == "last":
                row = conn.execute(select(runs).order_by(runs.c.created_at.desc()).limit(1)).first()
            else:
                row = conn.execute(select(runs).where(runs.c.id == ref)).first()
                if row is None:
                    rows = conn.execute(select(runs).where(runs.c.id.startswith(ref)).limit(2)).all()
                    if len(rows) > 1:
                        raise ConfigError(f"run {ref!r} is ambiguous; give more of its ID")
                    row = rows[0] if rows else None
        if row is None:
            raise ConfigError(f"no run {ref!r} in ledger {safe_url(self.url)}")
        return self._with_counts(RunInfo(**row._mapping))

    def runs(self, limit: int = 20) -> list[RunInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(runs).order_by(runs.c.created_at.desc()).limit(limit)).all()
        return [self._with_counts(RunInfo(**row._mapping)) for row in rows]

    def active_runs(self) -> list[RunInfo]:
        """Runs that still have work for a worker to join."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(runs)
                .where(runs.c.status.in_(("ready", "running", "stopped")))
                .order_by(runs.c.created_at)
            ).all()
        return [info for info in (self._with_counts(RunInfo(**r._mapping)) for r in rows) if info.remaining]

    def counts(self, run_id: str) -> tuple[dict[str, int], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(items.c.status, func.count(), func.coalesce(func.sum(items.c.bytes), 0))
                .where(items.c.run_id == run_id)
                .group_by(items.c.status)
            ).all()
        return {status: count for status, count, _ in rows}, int(sum(row[2] for row in rows))

    def _with_counts(self, info: RunInfo) -> RunInfo:
        info.counts, info.bytes = self.counts(info.id)
        return info

    def items(
        self,
        run_id: str,
        status: str | None = None,
        limit: int | None = None,
        *,
        kind: str | None = None,
        note: str | None = None,
        key_prefix: str | None = None,
        keys: Sequence[str] | None = None,
        scope: str | None = None,
    ) -> list[Item]:
        """A run's items in order, filtered by status, kind, note (why done/skipped), key prefix or scope."""
        query = select(items).where(items.c.run_id == run_id).order_by(items.c.id)
        if status:
            query = query.where(items.c.status == status)
        if kind:
            query = query.where(items.c.kind == kind)
        if note:
            query = query.where(items.c.last_error == note)
        if key_prefix:
            query = query.where(items.c.key.startswith(storable(key_prefix), autoescape=True))
        if keys is not None:
            query = query.where(items.c.key.in_([storable(key) for key in keys]))
        if scope is not None:
            query = query.where(items.c.scope == scope)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [item_from_row(row) for row in conn.execute(query).all()]

    def tally(self, run_id: str) -> Counter[tuple[str, str, str]]:
        """Item counts by (kind, status, note); the note (why skipped) only for done and skipped items."""
        note = case((items.c.status.in_((DONE, SKIPPED)), func.coalesce(items.c.last_error, "")), else_="")
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(items.c.kind, items.c.status, note, func.count())
                .where(items.c.run_id == run_id)
                .group_by(items.c.kind, items.c.status, note)
            ).all()
        return Counter({(kind, status, why): count for kind, status, why, count in rows})

    def finished_items(self, operations: Sequence[str], kind: str) -> Iterator[tuple[dict[str, Any], Item]]:
        """(run params, item) for done or skipped items of KIND in earlier runs of OPERATIONS."""
        with self.engine.connect() as conn:
            chosen = conn.execute(
                select(runs.c.id, runs.c.params).where(runs.c.operation.in_(operations))
            ).all()
            for run_id, params in chosen:
                rows = conn.execute(
                    select(items).where(
                        items.c.run_id == run_id, items.c.kind == kind, items.c.status.in_((DONE, SKIPPED))
                    )
                )
                for row in rows:
                    yield params, item_from_row(row)

    def next_retry_at(self, run_id: str) -> float | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.min(items.c.not_before)).where(
                    items.c.run_id == run_id, items.c.status == PENDING
                )
            ).scalar()

    # -- checkpoints (for followers of change feeds) --------------------------------------------

    def checkpoint(self, run_id: str, name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(checkpoints.c.value).where(checkpoints.c.run_id == run_id, checkpoints.c.name == name)
            ).scalar()

    def set_checkpoint(self, run_id: str, name: str, value: str) -> None:
        with self._write() as conn:
            changed = conn.execute(
                update(checkpoints)
                .where(checkpoints.c.run_id == run_id, checkpoints.c.name == name)
                .values(value=value, updated_at=time.time())
            ).rowcount
            if not changed:
                conn.execute(
                    checkpoints.insert().values(run_id=run_id, name=name, value=value, updated_at=time.time())
                )
