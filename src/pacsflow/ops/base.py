"""The contract between an operation and the engine: plan items, do one item, report an Outcome."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pacsflow.config import Settings
from pacsflow.ledger import DONE, Item, Ledger, PlannedItem, RunInfo

log = logging.getLogger("pacsflow")


@dataclass
class Outcome:
    """What doing one item produced: done or skipped, bytes moved, a result to keep, new items to plan."""

    status: str = DONE
    nbytes: int = 0
    result: dict[str, Any] | None = None
    note: str | None = None
    children: Sequence[PlannedItem] = field(default_factory=tuple)


class Operation(ABC):
    """One kind of job (upload, transfer...). Never starts threads, sleeps for retries, or draws progress."""

    #: the name runs are stored under; `resume` finds the class by it
    name: ClassVar[str]
    #: what the progress line calls an item
    unit: ClassVar[str] = "items"

    def __init__(self, settings: Settings, params: dict[str, Any]) -> None:
        self.settings = settings
        self.params = params
        #: set by the engine before planning, for operations that summarise from the ledger
        self.ledger: Ledger

    def preflight(self) -> None:  # noqa: B027 - optional hook
        """Check servers and inputs before any item runs; raise a fatal error to stop at once."""

    @abstractmethod
    def plan(self) -> Iterable[PlannedItem]:
        """List the run's first items (more may come as children of outcomes)."""

    @abstractmethod
    def do(self, item: Item) -> Outcome:
        """Do one item, idempotently: a crash may make it run again."""

    #: True when items talk to different remotes (forward: one destination each), so that one remote
    #: down holds only its own items; False pauses the whole run while any of its remotes is down
    remotes_per_item: ClassVar[bool] = False

    def item_remotes(self, item: Item) -> Collection[str] | None:
        """The remotes ITEM talks to (names as in Unreachable.remote); None: all of the run's."""
        return None

    def finish(self, run: RunInfo) -> list[str]:
        """After the last item: final checks; returns summary lines to show."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


_REGISTRY: dict[str, type[Operation]] = {}


def register(cls: type[Operation]) -> type[Operation]:
    """Class decorator: make an operation resumable by name."""
    _REGISTRY[cls.name] = cls
    return cls


def operation_class(name: str) -> type[Operation]:
    from pacsflow.ops import download, populate, roster, transfer, upload  # noqa: F401 - they register themselves

    try:
        return _REGISTRY[name]
    except KeyError:
        from pacsflow.errors import ConfigError

        raise ConfigError(f"this pacsflow does not know operation {name!r}") from None


def summarize(run: RunInfo) -> dict[str, Any]:
    """Counts and bytes as stored in the run's summary."""
    return {"counts": run.counts, "bytes": run.bytes}
