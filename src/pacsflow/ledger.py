"""The ledger: every run and its items in SQLite or PostgreSQL; safe claiming for many processes."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Iterable, Sequence
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
    and_,
    case,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

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


@dataclass(frozen=True)
class PlannedItem:
    """An item an operation wants done; KEY is unique within its run (a path, an Orthanc ID...)."""

    kind: str
    key: str
    payload: dict[str, Any] = field(default_factory=dict)
    phase: int = 0


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
        try:
            metadata.create_all(self.engine)
        except OperationalError as exc:
            raise ConfigError(f"cannot open ledger {_safe_url(url)}: {exc.orig}") from None
        self.is_postgres = self.engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    # -- runs -----------------------------------------------------------------------------------

    def create_run(self, operation: str, params: dict[str, Any], run_id: str | None = None) -> str:
        run_id = run_id or new_run_id()
        now = time.time()
        with self.engine.begin() as conn:
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
        with self.engine.begin() as conn:
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
                "key": item.key,
                "payload": item.payload,
                "status": PENDING,
                "attempts": 0,
                "bytes": 0,
                "not_before": 0.0,
                "created_at": now,
            }
            for item in {item.key: item for item in batch}.values()
        ]
        statement = self._insert_ignore().values(rows)
        if conn is not None:
            return conn.execute(statement).rowcount or 0
        with self.engine.begin() as own:
            return own.execute(statement).rowcount or 0

    def _insert_ignore(self) -> Any:
        if self.is_postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(items).on_conflict_do_nothing(index_elements=["run_id", "key"])

    def claim(self, run_id: str, worker: str, limit: int, lease_seconds: float) -> list[Item]:
        """Atomically take up to LIMIT runnable items of the run's lowest unfinished phase."""
        now = time.time()
        open_phase = (
            select(func.min(items.c.phase))
            .where(items.c.run_id == run_id, items.c.status.in_((PENDING, RUNNING)))
            .scalar_subquery()
        )
        candidates = (
            select(items.c.id)
            .where(
                items.c.run_id == run_id,
                items.c.phase == open_phase,
                or_(
                    and_(items.c.status == PENDING, items.c.not_before <= now),
                    and_(items.c.status == RUNNING, items.c.lease_until < now),
                ),
            )
            .order_by(items.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(items)
            .where(items.c.id.in_(candidates))
            .values(
                status=RUNNING,
                worker=worker,
                lease_until=now + lease_seconds,
                attempts=items.c.attempts + 1,
                started_at=now,
            )
            .returning(*items.c)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(statement).all()
        return sorted((_item(row) for row in rows), key=lambda item: item.id)

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
        """Mark an item done or skipped and add its children, in one transaction.

        Returns False when the item is no longer ours (its lease ran out and another worker took it).
        """
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(items)
                .where(items.c.id == item.id, items.c.worker == worker, items.c.status == RUNNING)
                .values(
                    status=status,
                    bytes=nbytes,
                    result=result,
                    last_error=note,
                    finished_at=time.time(),
                    lease_until=None,
                )
            ).rowcount
            if changed and children:
                self._insert(item.run_id, children, conn)
        return bool(changed)

    def fail(self, item: Item, worker: str, error: str, retry_at: float | None = None) -> bool:
        """Record an error: back to pending after RETRY_AT, or failed for good when RETRY_AT is None."""
        values: dict[str, Any] = {"last_error": error[:2000], "lease_until": None}
        if retry_at is None:
            values.update(status=FAILED, finished_at=time.time())
        else:
            values.update(status=PENDING, not_before=retry_at)
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(items)
                .where(items.c.id == item.id, items.c.worker == worker, items.c.status == RUNNING)
                .values(**values)
            ).rowcount
        return bool(changed)

    def release(self, held: Sequence[Item], worker: str) -> None:
        """Give items back untouched (stop requested before they started): not counted as an attempt."""
        if not held:
            return
        with self.engine.begin() as conn:
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
        with self.engine.begin() as conn:
            conn.execute(
                update(items)
                .where(items.c.worker == worker, items.c.status == RUNNING)
                .values(lease_until=time.time() + lease_seconds)
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
        with self.engine.begin() as conn:
            return conn.execute(
                update(items)
                .where(items.c.run_id == run_id, items.c.status == RUNNING, items.c.worker.in_(dead))
                .values(status=PENDING, lease_until=None)
            ).rowcount

    def retry_failed(self, run_id: str) -> int:
        """Failed items back to pending with a fresh attempt count."""
        with self.engine.begin() as conn:
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
            query = query.where(items.c.key.startswith(key_prefix, autoescape=True))
        if keys is not None:
            query = query.where(items.c.key.in_(list(keys)))
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
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(checkpoints)
                .where(checkpoints.c.run_id == run_id, checkpoints.c.name == name)
                .values(value=value, updated_at=time.time())
            ).rowcount
            if not changed:
                conn.execute(
                    checkpoints.insert().values(run_id=run_id, name=name, value=value, updated_at=time.time())
                )


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
            return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        except ModuleNotFoundError:
            raise ConfigError("PostgreSQL ledger needs psycopg: pip install 'pacsflow[postgres]'") from None
    raise ConfigError(f"unsupported ledger database {parsed.get_backend_name()!r}: use sqlite or postgresql")


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
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: two processes can never claim the same item.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
