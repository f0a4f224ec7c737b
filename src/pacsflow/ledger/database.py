"""Database setup: SQLite (private file, WAL, busy timeout, BEGIN IMMEDIATE) or PostgreSQL (psycopg)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from pacsflow.errors import ConfigError, NoLedger


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for URL; with CREATE false a SQLite ledger that does not exist yet raises NoLedger
    (a command that only reads must leave no trace)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"ledger URL is not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, create)
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


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def is_lock_race(exc: DBAPIError) -> bool:
    """Whether another process setting up the same new ledger this very moment explains EXC."""
    text = str(exc.orig).lower()
    return any(word in text for word in ("locked", "already exists", "duplicate key"))


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


def _sqlite_engine(url: str, database: str | None, create: bool) -> Engine:
    if database and database != ":memory:":
        path = Path(database)
        if not create and not path.exists():
            raise NoLedger(f"there is no ledger at {path.resolve()} yet: no run was recorded there")
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
