"""pacsflow: move, copy, de-identify, retrieve and check medical images on Orthanc PACS servers.

The public surface, imported lazily (so that `import pacsflow` and the command line start at once):

    from pacsflow import Pacsflow            # the service layer: start, resume, follow, compare runs
    from pacsflow import Orthanc, Settings, load_settings, RunResult, PacsflowError, ...

Everything not listed in `__all__` is private and may change, but for `pacsflow.events` (its event
type constants, e.g. ITEM_DONE) and `pacsflow.api`, which are public modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Pacsflow": "pacsflow.api",
    "Comparison": "pacsflow.api",
    "Followed": "pacsflow.api",
    "RunResult": "pacsflow.engine",
    "Settings": "pacsflow.config",
    "ServerConfig": "pacsflow.config",
    "ModalityConfig": "pacsflow.config",
    "load_settings": "pacsflow.config",
    "Orthanc": "pacsflow.orthanc",
    "orthanc_id": "pacsflow.orthanc",
    "PacsflowError": "pacsflow.errors",
    "ConfigError": "pacsflow.errors",
    "BadInput": "pacsflow.errors",
    "RemoteError": "pacsflow.errors",
    "Unreachable": "pacsflow.errors",
    "Unauthorized": "pacsflow.errors",
    "Forbidden": "pacsflow.errors",
    "NotFound": "pacsflow.errors",
    "ServerError": "pacsflow.errors",
    "Unsupported": "pacsflow.errors",
    "PreflightError": "pacsflow.errors",
    "ParamsError": "pacsflow.errors",
    "RunInfo": "pacsflow.ledger",
    "Event": "pacsflow.events",
    "EventType": "pacsflow.events",
    "params_model": "pacsflow.ops.params",
    "validate_params": "pacsflow.ops.params",
}

__all__ = [
    "BadInput",
    "Comparison",
    "ConfigError",
    "Event",
    "EventType",
    "Followed",
    "Forbidden",
    "ModalityConfig",
    "NotFound",
    "Orthanc",
    "Pacsflow",
    "PacsflowError",
    "ParamsError",
    "PreflightError",
    "RemoteError",
    "RunInfo",
    "RunResult",
    "ServerConfig",
    "ServerError",
    "Settings",
    "Unauthorized",
    "Unreachable",
    "Unsupported",
    "__version__",
    "load_settings",
    "orthanc_id",
    "params_model",
    "validate_params",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pacsflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from pacsflow.api import Comparison, Followed, Pacsflow
    from pacsflow.config import ModalityConfig, ServerConfig, Settings, load_settings
    from pacsflow.engine import RunResult
    from pacsflow.errors import (
        BadInput,
        ConfigError,
        Forbidden,
        NotFound,
        PacsflowError,
        ParamsError,
        PreflightError,
        RemoteError,
        ServerError,
        Unauthorized,
        Unreachable,
        Unsupported,
    )
    from pacsflow.events import Event, EventType
    from pacsflow.ledger import RunInfo
    from pacsflow.ops.params import params_model, validate_params
    from pacsflow.orthanc import Orthanc, orthanc_id
