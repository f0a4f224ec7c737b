"""DICOM network (DIMSE) helpers on pynetdicom: C-ECHO and one-off C-FINDs (see qr for kept sessions)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from pacsflow.config import ModalityConfig
from pacsflow.errors import ConfigError, PreflightError, RemoteError, Unreachable
from pacsflow.logs import hide_pynetdicom_identifiers
from pacsflow.pacing import TokenBucket, limiter_for

hide_pynetdicom_identifiers()  # pynetdicom is imported from here on: its dumps hold PatientIDs

#: A-ASSOCIATE-RJ result 2: "rejected-transient" (busy, too many associations): try again later
_REJECTED_TRANSIENT = 0x02
_PENDING = (0xFF00, 0xFF01)
#: a StudyInstanceUID no study has (a UUID-derived UID of zeros): a C-FIND for it matches nothing, fast
_NO_STUDY = "2.25.0"


class FindFailed(RemoteError):
    """The node answered our C-FIND with a failure STATUS (None: an answer without one)."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


def _unreachable(
    modality: ModalityConfig, our_aet: str, message: str, bucket: TokenBucket | None = None
) -> Unreachable:
    return Unreachable(
        message,
        remote=modality.name or modality.display,
        probe=lambda: echo(modality, our_aet, bucket=bucket),
    )


@contextmanager
def associate(
    modality: ModalityConfig,
    our_aet: str,
    contexts: list[Any],
    timeout: float,
    bucket: TokenBucket | None = None,
) -> Iterator[Association]:
    """An association with the node, released afterwards; every step bounded by TIMEOUT.

    Raises Unreachable (a retry later may work) when the node does not answer, aborts, or rejects us
    transiently, and RemoteError when it rejects us for good (e.g. our AET is unknown to it). Each
    association takes a token from BUCKET (a run's own rate limit), else from the node's configured one.
    """
    bucket = _bucket(modality, bucket)
    if bucket is not None:
        bucket.acquire()
    ae = AE(ae_title=our_aet)
    for context in contexts:
        ae.add_requested_context(context)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = open_association(ae, modality, our_aet, bucket)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _bucket(modality: ModalityConfig, bucket: TokenBucket | None) -> TokenBucket | None:
    """The rate limit requests to MODALITY take from: BUCKET (a run's own), else the configured one."""
    return bucket if bucket is not None else limiter_for(modality.name)


def _take(modality: ModalityConfig, bucket: TokenBucket | None) -> None:
    """One token for a request on an association (the association took one of its own)."""
    bucket = _bucket(modality, bucket)
    if bucket is not None:
        bucket.acquire()


def open_association(
    ae: AE,
    modality: ModalityConfig,
    our_aet: str,
    bucket: TokenBucket | None,
    *,
    ext_neg: list[Any] | None = None,
    handlers: list[Any] | None = None,
) -> Association:
    """AE's association with the node, established, or the reason why not: Unreachable (refused, timed
    out, aborted, rejected for now) or RemoteError (rejected for good: our AET is likely unknown)."""
    rejections: list[Any] = []

    def on_pdu(event: Any) -> None:
        # the node's A-ASSOCIATE-RJ as it arrives: a node that closes the connection right after it
        # (dcmqrscp) can make pynetdicom report the association aborted rather than rejected
        if type(event.pdu).__name__ == "A_ASSOCIATE_RJ":
            rejections.append(getattr(event.pdu, "result", None))

    assoc = ae.associate(
        modality.host,
        modality.port,
        ae_title=modality.aet,
        ext_neg=ext_neg,
        evt_handlers=[*(handlers or ()), (evt.EVT_PDU_RECV, on_pdu)],
    )
    if assoc.is_rejected or rejections:
        if _REJECTED_TRANSIENT in rejections:
            raise _unreachable(
                modality,
                our_aet,
                f"{modality.display}: association rejected for now (busy); will try again",
                bucket,
            )
        raise RemoteError(f"{modality.display}: association rejected (is our AET {our_aet!r} known to it?)")
    if not assoc.is_established:
        raise _unreachable(
            modality,
            our_aet,
            f"cannot reach {modality.display}: no DICOM association (refused, timed out or aborted)",
            bucket,
        )
    return assoc


def echo(
    modality: ModalityConfig, our_aet: str, timeout: float = 10.0, *, bucket: TokenBucket | None = None
) -> float:
    """C-ECHO a node; returns the round trip in milliseconds or raises with the reason."""
    started = time.monotonic()
    with associate(modality, our_aet, [Verification], timeout, bucket) as assoc:
        _take(modality, bucket)
        status = assoc.send_c_echo()
        if not status:
            raise _unreachable(modality, our_aet, f"{modality.display}: association aborted during C-ECHO")
    if int(getattr(status, "Status", -1)) != 0:
        raise RemoteError(f"{modality.display}: C-ECHO failed")
    return (time.monotonic() - started) * 1000


def _find(
    modality: ModalityConfig, our_aet: str, query: Any, timeout: float, bucket: TokenBucket | None = None
) -> Iterator[Any]:
    """The identifiers a Study Root C-FIND answers with; an abort mid-way is Unreachable."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyRootFind

    with associate(modality, our_aet, [StudyRootFind], timeout, bucket) as assoc:
        _take(modality, bucket)
        for status, identifier in assoc.send_c_find(query, StudyRootFind):
            if not status:  # pynetdicom's sign of an aborted association or a DIMSE timeout
                raise _unreachable(
                    modality,
                    our_aet,
                    f"{modality.display}: association aborted or timed out during C-FIND",
                    bucket,
                )
            code = getattr(status, "Status", None)
            if code in _PENDING and identifier is not None:
                yield identifier
            elif code != 0:
                shown = f"status 0x{int(code):04X}" if code is not None else "an answer without a status"
                raise FindFailed(f"{modality.display}: C-FIND failed ({shown})", code)


def check_find(
    modality: ModalityConfig, our_aet: str, timeout: float = 30.0, *, bucket: TokenBucket | None = None
) -> None:
    """Ask the node one C-FIND that matches nothing: whether it lets us query it at all.

    A node that does not know our AE title often accepts the association and the C-ECHO, then refuses
    the C-FIND: Orthanc aborts the association, other nodes answer a failure status. Either way every
    later C-FIND would fail alike, so this says why once, before any work. Raises ConfigError naming
    that likely cause, PreflightError when the node does not answer a C-ECHO either (it is down).
    """
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = _NO_STUDY
    try:
        for _ in _find(modality, our_aet, query, timeout, bucket):
            pass
    except Unreachable:
        try:
            echo(modality, our_aet, bucket=bucket)
        except Unreachable as down:  # the node went down: not a refusal
            raise PreflightError(str(down)) from None
        how = "it aborts the association when asked"
    except FindFailed as exc:
        how = f"status 0x{exc.status:04X}" if exc.status is not None else "an answer without a status"
    else:
        return
    raise ConfigError(
        f"{modality.display} answers C-ECHO but refuses our C-FIND ({how}): it likely does not know our "
        f"AE title {our_aet!r}; add {our_aet} with this machine's address and DICOM port to its "
        "DicomModalities (an Orthanc node may instead set DicomAlwaysAllowFind)"
    )


def study_instance_uids(
    modality: ModalityConfig, our_aet: str, study_uid: str, timeout: float = 30.0
) -> set[str]:
    """SOPInstanceUIDs a node holds for one study (C-FIND at IMAGE level, Study Root)."""
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.SOPInstanceUID = ""
    found = {
        str(identifier.get("SOPInstanceUID", "")) for identifier in _find(modality, our_aet, query, timeout)
    }
    found.discard("")
    return found


def find(
    modality: ModalityConfig, our_aet: str, level: str, keys: dict[str, str], timeout: float = 30.0
) -> list[dict[str, str]]:
    """C-FIND (Study Root) at LEVEL with KEYS as matching and return keys; one dict of strings per answer."""
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return [
        {keyword: str(identifier.get(keyword, "") or "") for keyword in keys}
        for identifier in _find(modality, our_aet, query, timeout)
    ]
