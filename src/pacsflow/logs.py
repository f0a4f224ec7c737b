"""Logging of a command: our lines at the chosen level; libraries' own lines below ours."""

from __future__ import annotations

import logging
import sys

#: shown by no level: what a library says only with values a user must not see without --log-phi
_NEVER = logging.CRITICAL + 1
#: libraries whose log lines repeat, less clearly, what pacsflow says itself (pynetdicom's
#: `Association request failed` before our `cannot reach PACS@host:104: ...`), with the level each
#: shows with -v, and with -v --log-phi: pynetdicom's DEBUG dumps C-FIND identifiers, httpx's INFO
#: names instance IDs, sqlalchemy's INFO prints every statement with its values; pydicom's warnings
#: and Python's (py.warnings, where warnings go once captured) quote the values they find invalid
#: ("Invalid value for VR DA: '19990102'"): a patient's date or name
LIBRARIES = {
    "pynetdicom": (logging.INFO, logging.DEBUG),
    "httpx": (logging.WARNING, logging.INFO),
    "httpcore": (logging.WARNING, logging.WARNING),
    "alembic": (logging.INFO, logging.INFO),
    "sqlalchemy": (logging.WARNING, logging.WARNING),
    "pydicom": (_NEVER, logging.WARNING),
    "py.warnings": (_NEVER, logging.WARNING),
}


#: whether patient data may be logged (set by configure_logging; pynetdicom's identifiers follow it)
_log_phi = False


class _Demoted(logging.Filter):
    """On a handler: a library's records become DEBUG ones, shown only with -v. (A filter on the
    library's logger would miss its child loggers' records, such as pynetdicom.assoc's.)"""

    def __init__(self, shown: bool) -> None:
        super().__init__()
        self.shown = shown

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in LIBRARIES:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.shown


def configure_logging(*, verbose: bool = False, quiet: bool = False, log_phi: bool = False) -> None:
    """Log lines on stderr: DEBUG with VERBOSE, WARNING with QUIET, else INFO; every line of the
    libraries in LIBRARIES counts as DEBUG, and those that carry patient data need LOG_PHI too."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.captureWarnings(True)  # a library's warnings are log lines too, under the same rules
    for name, (shown, with_phi) in LIBRARIES.items():
        logging.getLogger(name).setLevel(
            (with_phi if log_phi else shown) if verbose else max(logging.WARNING, shown)
        )
    global _log_phi
    _log_phi = log_phi
    if "pynetdicom" in sys.modules:  # else applied when dimse imports it: not 0.2 s at every start
        hide_pynetdicom_identifiers()
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _Demoted)]:
            handler.removeFilter(old)
        handler.addFilter(_Demoted(shown=verbose))


def hide_pynetdicom_identifiers() -> None:
    """pynetdicom logs each C-FIND/C-MOVE/C-GET identifier (PatientID and all) at INFO: only with
    --log-phi. Called once pynetdicom is imported (by dimse), and again when logging is configured."""
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = _log_phi
