"""Opening Orthanc servers for operations and checking them before a run starts."""

from __future__ import annotations

from pacsflow.config import ModalityConfig, Settings
from pacsflow.errors import ConfigError, PacsflowError, Unreachable
from pacsflow.orthanc import Orthanc


class PreflightError(PacsflowError):
    """A server cannot be used at all (unreachable at start): the run does not start."""

    fatal = True


def connect(settings: Settings, spec: str, workers: int) -> Orthanc:
    """A client for a server name or URL, its connection pool sized to the workers."""
    if settings.is_modality(spec):
        raise ConfigError(f"{spec!r} is a DICOM modality; this command needs an Orthanc server here")
    return Orthanc(settings.server(spec), pool_size=max(2, workers + 2))


def preflight_node(node: ModalityConfig, our_aet: str) -> None:
    """Fail at once, with one clear line, when a DICOM node does not answer our C-ECHO."""
    from pacsflow.dimse import echo  # lazily: pynetdicom is slow to import and most runs never need it

    try:
        echo(node, our_aet)
    except Unreachable as exc:
        raise PreflightError(str(exc)) from None


def preflight_server(server: Orthanc) -> None:
    """Fail at once, with one clear line, on a wrong password or an unreachable server."""
    try:
        server.request("GET", "/system", retry=False)
        server.capabilities()
    except Unreachable as exc:
        raise PreflightError(str(exc)) from None
