"""What the ledger takes and gives: planned items, outcomes to record, stored items, runs with counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pacsflow.ledger.schema import PENDING, RUNNING


@dataclass(frozen=True)
class PlannedItem:
    """An item an operation wants done; KEY is unique within its run (a path, an Orthanc ID...)."""

    kind: str
    key: str
    payload: dict[str, Any] = field(default_factory=dict)
    phase: int = 0
    #: already settled when planned (e.g. SKIPPED: an unchanged file a previous run verified)
    status: str = PENDING
    note: str | None = None
    result: dict[str, Any] | None = None
    #: bytes moved by an item settled when planned (an instance a storage SCP received)
    nbytes: int = 0
    #: what its phase orders it within (see schema.items.scope); None: the whole run
    scope: str | None = None


@dataclass
class Record:
    """What became of a claimed item: done/skipped (bytes, result, children), failed, or pending again."""

    item: Item
    status: str
    nbytes: int = 0
    result: dict[str, Any] | None = None
    note: str | None = None
    children: Sequence[PlannedItem] = ()
    retry_at: float | None = None
    #: given back before it started (stop, rate limit): the claim does not count as an attempt
    unstarted: bool = False


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
    scope: str | None = None


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


def item_from_row(row: Any) -> Item:
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
        scope=data.get("scope"),
    )


def storable(value: str) -> str:
    """Text any database stores: undecodable bytes of file names (lone surrogates) become escapes."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")
