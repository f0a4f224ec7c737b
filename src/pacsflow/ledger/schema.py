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
REVISION = "0003"

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
    #: phases order items within their scope (a patient, a study): a scoped item waits only for its own
    #: scope's earlier phases and for unscoped items of earlier phases; an unscoped one for everything
    Column("scope", String(200)),
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
    Index("ix_items_scope", "run_id", "scope", "status", "phase"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("run_id", String(40), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

#: de-identification: one row per patient, the pseudonym and date shift every run gives them
pseudonyms = Table(
    "pseudonyms",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", Text, nullable=False),
    Column("patient_name", Text),
    Column("pseudonym", String(64), nullable=False),
    Column("n", Integer),
    Column("date_shift", Integer, nullable=False),
    Column("source", String(16), nullable=False),
    Column("run_id", String(40)),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("patient_id", name="uq_pseudonyms_patient"),
    UniqueConstraint("pseudonym", name="uq_pseudonyms_pseudonym"),
)

#: de-identification: one row per instance and place its de-identified copy went (a folder, a server)
mapping = Table(
    "mapping",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40)),
    Column("target", Text, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("patient_name", Text),
    Column("pseudonym", String(64), nullable=False),
    Column("accession", Text),
    Column("new_accession", Text),
    Column("study_uid", String(64), nullable=False),
    Column("new_study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("new_series_uid", String(64), nullable=False),
    Column("sop_uid", String(64), nullable=False),
    Column("new_sop_uid", String(64), nullable=False),
    Column("study_date", String(32)),
    Column("date_shift", Integer),
    Column("orthanc_before", String(44)),
    Column("orthanc_after", String(44)),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("sop_uid", "new_sop_uid", "target", name="uq_mapping_instance"),
    Index("ix_mapping_pseudonym", "pseudonym"),
    Index("ix_mapping_new_sop", "new_sop_uid"),
)
