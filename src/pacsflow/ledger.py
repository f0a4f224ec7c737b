"""The ledger: every run and its items in SQLite or PostgreSQL; safe claiming for many processes."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    case,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from pacsflow.errors import ConfigError

PENDING, RUNNING, DONE, SKIPPED, FAILED = "pending", "running", "done", "skipped", "failed"
FINISHED = (DONE, SKIPPED, FAILED)

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("operation", String(64), nullable=False),
    Column("params", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("summary", JSON),
)

items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("phase", Integer, nullable=False, default=0),
    Column("kind", String(32), nullable=False),
    Column("key", Text, nullable=False),
    Column("payload", JSON),
    Column("status", String(16), nullable=False, default=PENDING),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("result", JSON),
    Column("worker", String(128)),
    Column("lease_until", Float),
    Column("not_before", Float, nullable=False, default=0.0),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    UniqueConstraint("run_id", "key", name="uq_items_run_key"),
    Index("ix_items_claim", "run_id", "status", "phase", "id"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("run_id", String(40), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)


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


@dataclass(frozen=True)
class PlannedItem:
    """An item an operation wants done; KEY is unique within its run (a path, an Orthanc ID...)."""

    kind: str
    key: str
    payload: dict[str, Any] = field(default_factory=dict)
    phase: int = 0
    #: already settled when planned (e.g. SKIPPED: an unchanged file a previous run verified)
    status: str = PENDING
    note: str | None = None
    result: dict[str, Any] | None = None


@dataclass
class Record:
    """What became of a claimed item: done/skipped (bytes, result, children), failed, or pending again."""

    item: Item
    status: str
    nbytes: int = 0
    result: dict[str, Any] | None = None
    note: str | None = None
    children: Sequence[PlannedItem] = ()
    retry_at: float | None = None
    #: given back before it started (stop, rate limit): the claim does not count as an attempt
    unstarted: bool = False


@dataclass
class Item:
    """An item as stored in the ledger."""

    id: int
    run_id: str
    phase: int
    kind: str
    key: str
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    bytes: int
    result: dict[str, Any] | None
    worker: str | None


@dataclass
class RunInfo:
    """A run's header and its item counts."""

    id: str
    operation: str
    params: dict[str, Any]
    status: str
    created_at: float
    updated_at: float
    finished_at: float | None
    summary: dict[str, Any] | None
    counts: dict[str, int] = field(default_factory=dict)
    bytes: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def remaining(self) -> int:
        return self.counts.get(PENDING, 0) + self.counts.get(RUNNING, 0)


def exhausted_note(attempts: int) -> str:
    return (
        f"gave up after {attempts} attempts that never reported back "
        "(the process working on it died: killed, out of memory?)"
    )


def new_worker_id() -> str:
    """hostname:pid:random: lets a process on the same host tell whether the worker is still alive."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def _worker_is_dead(worker: str) -> bool:
    """True only when the worker ran on this host and its process is gone."""
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


class Ledger:
    """Runs and items in a database given by URL (`sqlite:///path` or `postgresql+psycopg://...`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        for attempt in range(100):
            try:
                metadata.create_all(self.engine)
                break
            except DBAPIError as exc:
                # another process may be creating the same new ledger this very moment
                if attempt == 99 or not _is_lock_race(exc):
                    raise ConfigError(f"cannot open ledger {_safe_url(url)}: {exc.orig}") from None
                time.sleep(0.1)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self._local = threading.local()
        self._stale_checked: dict[str, float] = {}
        if self.is_postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        self._insert_ignore = insert(items).on_conflict_do_nothing(index_elements=["run_id", "key"])

    def close(self) -> None:
        writer = getattr(self._local, "writer", None)
        if writer is not None:
            writer.close()
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE).

        Each thread keeps its writing connection: checking one out of the pool for every transaction
        cost more than the engine's whole claim.
        """
        conn = getattr(self._local, "writer", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect().execution_options(pacsflow_write=True)
            self._local.writer = conn
        try:
            with conn.begin():
                yield conn
        except BaseException:
            self._local.writer = None  # a broken connection is not reused
            conn.close()
            raise

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
                )
            )
        return run_id

    def set_status(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        now = time.time()
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if status in ("done", "failed"):
            values["finished_at"] = now
        if summary is not None:
            values["summary"] = summary
        with self._write() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))

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
            raise ConfigError(f"no run {ref!r} in ledger {_safe_url(self.url)}")
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

    # -- items ----------------------------------------------------------------------------------

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
                "kind": item.kind,
                "key": storable(item.key),
                "payload": item.payload,
                "status": item.status,
                "last_error": item.note,
                "result": item.result,
                "attempts": 0,
                "bytes": 0,
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
        where = {"q_run": run_id, "q_phase": min(open_phases), "q_now": now, "q_limit": limit}
        ids = list(conn.execute(_SQL.pending_ids, where).scalars())
        if len(ids) < limit and now - self._stale_checked.get(run_id, 0.0) > 5.0:
            self._stale_checked[run_id] = now
            ids += conn.execute(_SQL.stale_ids, {**where, "q_limit": limit - len(ids)}).scalars()
        if not ids:
            return [], 0
        rows = conn.execute(
            _SQL.take, {"q_ids": ids, "q_worker": worker, "q_lease": now + lease_seconds, "q_now": now}
        ).all()
        taken = sorted((_item(row) for row in rows), key=lambda item: item.id)
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
                keep = record.status != FAILED
                params.update(
                    q_status=record.status,
                    q_now=now,
                    q_bytes=record.nbytes if keep else 0,
                    q_result=record.result if keep else None,
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
            dead = [worker for worker in workers if worker and _worker_is_dead(worker)]
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
    ) -> list[Item]:
        """A run's items in order, filtered by status, kind, note (why done/skipped) or key prefix."""
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
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_item(row) for row in conn.execute(query).all()]

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
                    yield params, _item(row)

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


_SQL = _Statements()


def _item(row: Any) -> Item:
    data = row._mapping
    return Item(
        id=data["id"],
        run_id=data["run_id"],
        phase=data["phase"],
        kind=data["kind"],
        key=data["key"],
        payload=data["payload"] or {},
        status=data["status"],
        attempts=data["attempts"],
        last_error=data["last_error"],
        bytes=data["bytes"] or 0,
        result=data["result"],
        worker=data["worker"],
    )


def storable(value: str) -> str:
    """Text any database stores: undecodable bytes of file names (lone surrogates) become escapes."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_lock_race(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(word in text for word in ("locked", "already exists", "duplicate key"))


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def _make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"ledger URL is not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        try:
            # the application name tells, in pg_stat_activity, which process holds which connection
            return create_engine(
                url,
                pool_pre_ping=True,
                pool_size=10,
                max_overflow=20,
                connect_args={"application_name": application_name()},
            )
        except ModuleNotFoundError:
            raise ConfigError("PostgreSQL ledger needs psycopg: pip install 'pacsflow[postgres]'") from None
    raise ConfigError(f"unsupported ledger database {parsed.get_backend_name()!r}: use sqlite or postgresql")


def application_name() -> str:
    """How this process names itself to PostgreSQL."""
    return f"pacsflow:{os.getpid()}"


def _switch_to_wal(cursor: Any) -> None:
    """WAL lets readers go on while a writer works. Switching needs the file to ourselves for a moment:
    a process opening a brand-new ledger at the same time as another waits for it."""
    import sqlite3

    for _ in range(200):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower():
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA journal_mode=WAL")


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        path = Path(database)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.touch(mode=0o600)  # the ledger names patients' files: keep it private
        except OSError as exc:
            raise ConfigError(f"cannot create ledger {path}: {exc.strerror}") from None
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=60000")
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writes take the lock up front (IMMEDIATE): two processes can never claim the same item.
        # Reads begin deferred and, in WAL mode, never wait for a writer.
        immediate = conn.get_execution_options().get("pacsflow_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
