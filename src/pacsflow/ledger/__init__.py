"""The ledger: every run and its items in SQLite or PostgreSQL; safe claiming for many processes."""

from pacsflow.ledger.claims import exhausted_note, new_worker_id
from pacsflow.ledger.core import Ledger
from pacsflow.ledger.database import application_name
from pacsflow.ledger.model import Item, PlannedItem, Record, RunInfo, storable
from pacsflow.ledger.queries import new_run_id
from pacsflow.ledger.schema import DONE, FAILED, FINISHED, PENDING, RUNNING, SKIPPED

__all__ = [
    "DONE",
    "FAILED",
    "FINISHED",
    "PENDING",
    "RUNNING",
    "SKIPPED",
    "Item",
    "Ledger",
    "PlannedItem",
    "Record",
    "RunInfo",
    "application_name",
    "exhausted_note",
    "new_run_id",
    "new_worker_id",
    "storable",
]
