"""Brings a ledger's schema to the newest revision on open: one cheap query, Alembic only if behind."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import (
    Column,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from pacsflow.errors import ConfigError
from pacsflow.ledger.schema import REVISION, metadata

log = logging.getLogger("pacsflow")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: the revision of the schema pacsflow made with `create_all` before it had migrations
FIRST = "0001"
#: PostgreSQL advisory lock held while one process migrates (any constant; "pacsflow" in ASCII)
_LOCK = 0x7061637366_6C6F77


def upgrade(engine: Engine, name: str) -> None:
    """Bring the ledger at ENGINE (NAME in messages) to REVISION, the last one in MIGRATIONS.

    A ledger already there costs one query and no import of Alembic. Otherwise one process at a time
    (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock) looks again, then creates the tables of a new
    ledger at REVISION, or stamps one made before migrations existed as FIRST and applies the revisions it
    lacks, all in one transaction.
    """
    if _stored_revision(engine) == REVISION:
        return
    with engine.connect().execution_options(pacsflow_write=True) as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(_LOCK)))
        if not inspect(conn).get_table_names():
            _create_new(conn)
        else:
            _migrate(conn, name, MIGRATIONS)


#: Alembic's own version table, as it creates it
_VERSION = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def _create_new(conn: Connection) -> None:
    """An empty database: the tables as schema.py has them, stamped REVISION. Alembic's own advice for a
    new database, and a new ledger (every test, a user's first command) opens 0.3 s sooner without it;
    tests/test_migrations.py checks that the migrations make exactly these tables."""
    metadata.create_all(conn)
    _VERSION.create(conn)
    conn.execute(_VERSION.insert().values(version_num=REVISION))


def _stored_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:  # no such table: a new ledger, or one made before migrations
            return None


def _migrate(conn: Connection, name: str, migrations: Path) -> None:
    # Alembic logs at INFO, some of it when imported: not for the first command's output
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:
        alembic_log.setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = Config()
    config.set_main_option("script_location", str(migrations).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = conn
    head = ScriptDirectory.from_config(config).get_current_head()
    current = MigrationContext.configure(conn).get_current_revision()
    if current is None and inspect(conn).has_table("runs"):
        command.stamp(config, FIRST)
        current = FIRST
    if current == head:
        return
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        raise ConfigError(
            f"ledger {name} has schema revision {current}, which this pacsflow does not know "
            f"(it knows up to {head}): was it used by a newer pacsflow? ({exc})"
        ) from None
    if current is not None:
        log.info("ledger %s: schema upgraded from revision %s to %s", name, current, head)
