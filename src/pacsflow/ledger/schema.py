"""The ledger's tables (SQLAlchemy Core) at the newest revision of its migrations, and item statuses."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

PENDING, RUNNING, DONE, SKIPPED, FAILED = "pending", "running", "done", "skipped", "failed"
FINISHED = (DONE, SKIPPED, FAILED)

#: The migration (migrations/versions/) that makes these tables. A change to them is a new revision that
#: names this one as its down_revision, and this constant moves to it (tests/test_migrations.py checks both).
REVISION = "0001"

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
