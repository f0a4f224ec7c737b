"""DICOM network (DIMSE) helpers on pynetdicom: C-ECHO now; FIND, MOVE, GET, STORE and the SCP build on it."""

from __future__ import annotations

import logging
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacsflow.config import ModalityConfig
from pacsflow.errors import RemoteError, Unreachable

logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def echo(modality: ModalityConfig, our_aet: str, timeout: float = 10.0) -> float:
    """C-ECHO a node; returns the round trip in milliseconds or raises with the reason."""
    ae = AE(ae_title=our_aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    started = time.monotonic()
    assoc = ae.associate(modality.host, modality.port, ae_title=modality.aet)
    if assoc.is_rejected:
        raise RemoteError(f"{modality.display}: association rejected (is our AET {our_aet!r} known to it?)")
    if not assoc.is_established:
        raise Unreachable(
            f"cannot reach {modality.display}: no DICOM association (refused, timed out or aborted)"
        )
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or int(getattr(status, "Status", -1)) != 0:
        raise RemoteError(f"{modality.display}: C-ECHO failed")
    return (time.monotonic() - started) * 1000
