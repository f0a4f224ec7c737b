"""pacsflow: move, copy, de-identify, retrieve and check medical images on Orthanc PACS servers."""

from pacsflow.errors import (
    ConfigError,
    Forbidden,
    NotFound,
    PacsflowError,
    ServerError,
    Unauthorized,
    Unreachable,
)
from pacsflow.orthanc import Orthanc, orthanc_id

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Forbidden",
    "NotFound",
    "Orthanc",
    "PacsflowError",
    "ServerError",
    "Unauthorized",
    "Unreachable",
    "__version__",
    "orthanc_id",
]
