"""De-identification's mapping: pseudonyms (one row per patient) and mapping (one row per instance copy)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pseudonyms",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("patient_name", sa.Text),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("n", sa.Integer),
        sa.Column("date_shift", sa.Integer, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(40)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("patient_id", name="uq_pseudonyms_patient"),
        sa.UniqueConstraint("pseudonym", name="uq_pseudonyms_pseudonym"),
    )
    op.create_table(
        "mapping",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(40)),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("patient_name", sa.Text),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("accession", sa.Text),
        sa.Column("new_accession", sa.Text),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("new_study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("new_series_uid", sa.String(64), nullable=False),
        sa.Column("sop_uid", sa.String(64), nullable=False),
        sa.Column("new_sop_uid", sa.String(64), nullable=False),
        sa.Column("study_date", sa.String(32)),
        sa.Column("date_shift", sa.Integer),
        sa.Column("orthanc_before", sa.String(44)),
        sa.Column("orthanc_after", sa.String(44)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("sop_uid", "new_sop_uid", "target", name="uq_mapping_instance"),
    )
    op.create_index("ix_mapping_pseudonym", "mapping", ["pseudonym"])
    op.create_index("ix_mapping_new_sop", "mapping", ["new_sop_uid"])


def downgrade() -> None:
    op.drop_index("ix_mapping_new_sop", table_name="mapping")
    op.drop_index("ix_mapping_pseudonym", table_name="mapping")
    op.drop_table("mapping")
    op.drop_table("pseudonyms")
