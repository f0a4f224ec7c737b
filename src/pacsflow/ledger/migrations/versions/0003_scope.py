"""Items get a scope: phases order items within it, so that one patient's last step need not wait for
every other patient's first (an assembly line instead of run-wide barriers)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("scope", sa.String(200)))
    op.create_index("ix_items_scope", "items", ["run_id", "scope", "status", "phase"])


def downgrade() -> None:
    op.drop_index("ix_items_scope", table_name="items")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("scope")
