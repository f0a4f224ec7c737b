"""The Ledger: opens the database and brings its schema up to date; claims and queries are its mixins."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from pacsflow.errors import ConfigError
from pacsflow.ledger.claims import Claims
from pacsflow.ledger.database import is_lock_race, make_engine, safe_url
from pacsflow.ledger.migrate import upgrade
from pacsflow.ledger.queries import Queries
from pacsflow.ledger.schema import items


class Ledger(Claims, Queries):
    """Runs and items in a database given by URL (`sqlite:///path` or `postgresql+psycopg://...`)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """Open (with CREATE, also create) the ledger at URL and bring its schema up to date."""
        self.url = url
        self.engine = make_engine(url, create=create)
        for attempt in range(100):
            try:
                upgrade(self.engine, safe_url(url))
                break
            except DBAPIError as exc:
                # another process may be creating the same new ledger this very moment
                if attempt == 99 or not is_lock_race(exc):
                    raise ConfigError(f"cannot open ledger {safe_url(url)}: {exc.orig}") from None
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

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction for tables beside the runs (the de-identification mapping)."""
        return self._write()

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
