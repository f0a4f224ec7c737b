"""Alembic's environment for the ledger: migrates on the connection the Ledger opened (see ../migrate.py)."""

from __future__ import annotations

from alembic import context

from pacsflow.ledger.schema import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    render_as_batch=True,  # SQLite alters a table by copying it: Alembic's batch mode does that
)
with context.begin_transaction():
    context.run_migrations()
