"""Opening Orthanc servers for operations and checking them before a run starts."""

from __future__ import annotations

from pacsflow.config import ModalityConfig, Settings
from pacsflow.errors import ConfigError, PreflightError, Unreachable
from pacsflow.orthanc import Orthanc

__all__ = ["PreflightError", "connect", "preflight_node", "preflight_server"]  # PreflightError: old home


def connect(settings: Settings, spec: str, workers: int) -> Orthanc:
    """A client for a server name or URL, its connection pool sized to the workers. Nothing is sent yet.

    Raises ConfigError when SPEC is a DICOM modality, an unknown name or a bad URL.
    """
    if settings.is_modality(spec):
        raise ConfigError(f"{spec!r} is a DICOM modality; this command needs an Orthanc server here")
    return Orthanc(settings.server(spec), pool_size=max(2, workers + 2))


def preflight_node(node: ModalityConfig, our_aet: str) -> None:
    """Fail at once, with one clear line, when a DICOM node does not answer our C-ECHO.

    Raises PreflightError when it does not answer (or rejects us for now), RemoteError when it rejects
    us for good (our AET unknown to it) or the C-ECHO fails.
    """
    from pacsflow.dimse import echo  # lazily: pynetdicom is slow to import and most runs never need it

    try:
        echo(node, our_aet)
    except Unreachable as exc:
        raise PreflightError(str(exc)) from None


def preflight_server(server: Orthanc) -> None:
    """Fail at once, with one clear line, on a wrong password or an unreachable server.

    Raises PreflightError (unreachable, or down: HTTP 502/503/504), Unauthorized (wrong user or password;
    Forbidden when not allowed), ServerError for any other error answer.
    """
    try:
        server.request("GET", "/system", retry=False)
        server.capabilities()
    except Unreachable as exc:
        raise PreflightError(str(exc)) from None
