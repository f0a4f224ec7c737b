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


def study_instance_uids(
    modality: ModalityConfig, our_aet: str, study_uid: str, timeout: float = 30.0
) -> set[str]:
    """SOPInstanceUIDs a node holds for one study (C-FIND at IMAGE level, Study Root)."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title=our_aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.SOPInstanceUID = ""
    assoc = ae.associate(modality.host, modality.port, ae_title=modality.aet)
    if assoc.is_rejected:
        raise RemoteError(f"{modality.display}: association rejected (is our AET {our_aet!r} known to it?)")
    if not assoc.is_established:
        raise Unreachable(f"cannot reach {modality.display}: no DICOM association")
    found: set[str] = set()
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in (0xFF00, 0xFF01) and identifier is not None:
                found.add(str(identifier.get("SOPInstanceUID", "")))
            elif code != 0:
                raise RemoteError(f"{modality.display}: C-FIND failed (status 0x{code & 0xFFFF:04X})")
    finally:
        assoc.release()
    found.discard("")
    return found


def find(
    modality: ModalityConfig, our_aet: str, level: str, keys: dict[str, str], timeout: float = 30.0
) -> list[dict[str, str]]:
    """C-FIND (Study Root) at LEVEL with KEYS as matching and return keys; one dict of strings per answer."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title=our_aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    assoc = ae.associate(modality.host, modality.port, ae_title=modality.aet)
    if assoc.is_rejected:
        raise RemoteError(f"{modality.display}: association rejected (is our AET {our_aet!r} known to it?)")
    if not assoc.is_established:
        raise Unreachable(f"cannot reach {modality.display}: no DICOM association")
    answers: list[dict[str, str]] = []
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in (0xFF00, 0xFF01) and identifier is not None:
                answers.append({keyword: str(identifier.get(keyword, "") or "") for keyword in keys})
            elif code != 0:
                raise RemoteError(f"{modality.display}: C-FIND failed (status 0x{code & 0xFFFF:04X})")
    finally:
        assoc.release()
    return answers
