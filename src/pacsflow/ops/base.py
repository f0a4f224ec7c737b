"""The contract between an operation and the engine: plan items, do one item, report an Outcome."""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pacsflow.config import Settings
from pacsflow.ledger import DONE, Item, Ledger, PlannedItem, RunInfo
from pacsflow.ops.params import BaseParams, FreeParams

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
    """One kind of job (upload, transfer...). Never starts threads, sleeps for retries, or draws progress.

    Errors a method raises say what the engine does: a fatal one (ConfigError, PreflightError,
    Unauthorized, Unsupported) stops the run, a transient one (Unreachable, TransientError) puts the item
    back for later, any other PacsflowError (BadInput, NotFound, ServerError...) fails the item only.
    """

    #: the name runs are stored under; `resume` finds the class by it
    name: ClassVar[str]
    #: what the progress line calls an item
    unit: ClassVar[str] = "items"
    #: the parameter model (pacsflow.ops.params); the default takes any dict unchecked
    Params: ClassVar[type[BaseParams]] = FreeParams

    def __init__(self, settings: Settings, params: Mapping[str, Any] | BaseParams) -> None:
        """Check PARAMS against the operation's model; nothing is sent to any server yet.

        `self.p` is the checked model; `self.params` is what the ledger stores: the dict given, brought
        to its stored form in place (so that a key a caller adds before the run starts is stored too).
        Raises ParamsError (a ConfigError) naming each bad parameter; subclasses also raise ConfigError
        for a server name that is not configured.
        """
        self.settings = settings
        self.p = self.Params.parse(params)
        stored = self.p.stored()
        if isinstance(params, dict):
            for key in [key for key in params if key not in stored]:
                del params[key]
            for key, value in stored.items():
                if key not in params or params[key] != value:  # an unchanged value keeps its object
                    params[key] = value
            self.params: dict[str, Any] = params
        else:
            self.params = stored
        #: set by the engine before planning, for operations that summarise from the ledger
        self.ledger: Ledger
        #: the run being planned or worked, set by the engine with the ledger
        self.run_id: str | None = None

    def remember(self, name: str, value: Any) -> None:
        """Keep a parameter found while checking (a peer's name...) in `self.p` and in the stored params,
        so that a resumed run uses it without looking again."""
        setattr(self.p, name, value)
        key = type(self.p).model_fields[name].alias or name
        self.params[key] = self.p.model_dump(by_alias=True, mode="json", include={name})[key]

    def preflight(self) -> None:  # noqa: B027 - optional hook
        """Check servers and inputs before any item runs; raise a fatal error to stop at once.

        Raises PreflightError (a server or node does not answer), Unauthorized (wrong password),
        ConfigError (inputs or servers unusable for this operation), Unsupported (a server too old).
        """

    @abstractmethod
    def plan(self) -> Iterable[PlannedItem]:
        """List the run's first items (more may come as children of outcomes).

        Raises what a server's answers raise (Unreachable: the run waits for it; others fail the run).
        """

    @abstractmethod
    def do(self, item: Item) -> Outcome:
        """Do one item, idempotently: a crash may make it run again.

        Raises BadInput (this item is unusable), TransientError or Unreachable (later), or what a
        server's answers raise (see the class docstring for what each one makes the engine do).
        """

    #: True when items talk to different remotes (forward: one destination each), so that one remote
    #: down holds only its own items; False pauses the whole run while any of its remotes is down
    remotes_per_item: ClassVar[bool] = False

    def threads(self, workers: int) -> int:
        """How many threads work the run's items for WORKERS workers: one each, unless the operation
        hands its work to processes (then a thread waits for each, and one more keeps each busy)."""
        return workers

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


#: the module of each of pacsflow's operations: a run imports only its own (retrieve's pynetdicom or
#: anonymize's profile are not every command's start-up)
OPERATION_MODULES = {
    "anonymize": "anonymize",
    "anonymize-copy": "anonymize_copy",
    "clone": "transfer",
    "delete": "delete",
    "download": "download",
    "forward": "transfer",
    "migrate": "migrate",
    "populate": "populate",
    "retrieve": "retrieve",
    "roster-upload": "roster",
    "transfer": "transfer",
    "upload": "upload",
    "validate": "validate",
}


def operation_class(name: str) -> type[Operation]:
    """The operation whose runs are stored under NAME. Raises ConfigError for one this pacsflow lacks."""
    if name not in _REGISTRY and name in OPERATION_MODULES:
        importlib.import_module(f"pacsflow.ops.{OPERATION_MODULES[name]}")  # it registers itself
    try:
        return _REGISTRY[name]
    except KeyError:
        from pacsflow.errors import ConfigError

        raise ConfigError(f"this pacsflow does not know operation {name!r}") from None


def summarize(run: RunInfo) -> dict[str, Any]:
    """Counts and bytes as stored in the run's summary."""
    return {"counts": run.counts, "bytes": run.bytes}
