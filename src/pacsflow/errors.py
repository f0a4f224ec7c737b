"""One exception hierarchy for pacsflow: what went wrong, where, and whether a retry can help."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class PacsflowError(Exception):
    """Base of every error pacsflow raises on purpose; its message is one line for a person.

    WHERE (a file or folder name) and DETAIL may name a patient: logs show them only with --log-phi,
    while the ledger and `run show` keep the whole line.
    """

    #: a retry later may succeed (network fault, server restarting, timeout)
    transient: bool = False
    #: the whole run must stop: retrying other items cannot help (bad password, bad config)
    fatal: bool = False
    #: what an item did before it failed (an archive's members sent before one of them failed): the
    #: ledger keeps it with the failure, so that counts and bytes are not lost
    result: dict[str, Any] | None = None
    nbytes: int = 0

    def __init__(self, message: str = "", *, where: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.reason = message
        self.where = where
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.where}: {self.reason}" if self.where else self.reason
        return f"{text} ({self.detail})" if self.detail else text


class ConfigError(PacsflowError):
    """The configuration or the command line is wrong (exit status 2)."""

    fatal = True


class NoLedger(ConfigError):
    """The ledger a command reads does not exist yet: nothing was ever recorded there."""


class ParamsError(ConfigError):
    """An operation's parameters are wrong. PARAMS names them as the ledger stores them (`batch_size`,
    `from`), for a form to mark; the message names them as the command line does (`--batch-size`)."""

    def __init__(self, message: str, *, params: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.params = tuple(params)


class PreflightError(PacsflowError):
    """A server or DICOM node cannot be used at all (unreachable at start): the run does not start."""

    fatal = True


class TransientError(PacsflowError):
    """Not now, but later: the item goes back to pending and is tried again after a backoff."""

    transient = True


class BadInput(PacsflowError):
    """One input item is unusable (corrupt file, missing folder, malformed CSV row)."""


class RemoteError(PacsflowError):
    """A remote server or DICOM node failed to do what was asked."""


class Unreachable(RemoteError):
    """Connection refused, DNS failure, timeout, a dropped connection or an aborted DICOM association.

    REMOTE names the server or node (its configured name, or its URL without credentials); PROBE, when
    given, asks that remote a cheap question (`GET /system`, C-ECHO) and raises if it still does not
    answer: the engine uses it to tell "this remote is down, wait for it" from "this item failed".
    """

    transient = True

    def __init__(
        self,
        message: str = "",
        *,
        remote: str | None = None,
        probe: Callable[[], object] | None = None,
        where: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, where=where, detail=detail)
        self.remote = remote
        self.probe = probe


class Unauthorized(RemoteError):
    """The server refused our credentials (HTTP 401)."""

    fatal = True


class Forbidden(Unauthorized):
    """The credentials are valid but not allowed to do this (HTTP 403)."""


class NotFound(RemoteError):
    """The resource does not exist on the server (HTTP 404)."""


class ServerError(RemoteError):
    """The server answered with an error; carries its own message (Orthanc's `Message`/`Details`)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, detail=detail)
        self.status = status
        self.transient = transient


class Unsupported(RemoteError):
    """The server lacks a capability (for example labels before Orthanc 1.12)."""

    fatal = True


class Interrupted(PacsflowError):
    """The run was asked to stop (Ctrl-C, SIGTERM); its items stay in the ledger for `resume`."""


def public_text(exc: PacsflowError, log_phi: bool = False) -> str:
    """EXC as a log line or the terminal may show it: without `where` and `detail` (file names, Orthanc
    IDs, UIDs) unless LOG_PHI. A configuration error keeps its `where`: a config or CSV file name."""
    if log_phi:
        return str(exc)
    if isinstance(exc, ConfigError) and exc.where:
        return f"{exc.where}: {exc.reason}"
    return exc.reason
