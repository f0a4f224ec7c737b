"""Query/retrieve sessions with a DICOM node: one association kept for many C-FIND, C-MOVE and C-GET
requests, every request paced by one rate limit, every wait bounded, a dead association rebuilt."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.dataset import Dataset

from pacsflow.config import ModalityConfig
from pacsflow.dimse import echo, open_association
from pacsflow.errors import ConfigError, RemoteError, Unreachable
from pacsflow.pacing import TokenBucket

log = logging.getLogger("pacsflow")

Method = Literal["move", "get"]
#: how long an association request may wait for its answer, and a request for each of its responses:
#: a C-MOVE or C-GET answers with a pending response per instance sent, so a long series never waits
#: this long at once (dcmtk's movescu waits for ever by default: the seed's hang)
ASSOCIATE_TIMEOUT, RESPONSE_TIMEOUT = 30.0, 60.0
_PENDING = (0xFF00, 0xFF01)
_SUCCESS, _WARNING = 0x0000, 0xB000
#: C-MOVE: "Refused: Move Destination unknown" (PS3.4 C.4.2.1.5)
_MOVE_DESTINATION_UNKNOWN = 0xA801
#: C-STORE status our C-GET handler answers when it cannot keep an instance: "Refused: Out of Resources"
_OUT_OF_RESOURCES = 0xA700

#: pynetdicom's C-STORE event of an instance a C-GET sends back -> the status to answer
StoreHandler = Callable[[Any], int]


@dataclass
class Retrieved:
    """What the node said of one C-MOVE or C-GET: its sub-operations completed, failed and warned."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: int = _SUCCESS


class Refused(RemoteError):
    """The node answered a C-MOVE or C-GET with a failure status; RETRIEVED says what it had sent.
    Retried with backoff: out of resources (0xA7xx) or unable to process (0xCxxx) often pass."""

    transient = True

    def __init__(self, message: str, retrieved: Retrieved) -> None:
        super().__init__(message)
        self.retrieved = retrieved


class Session:
    """One association with MODALITY for one worker, opened when first needed and kept for many
    requests; when the node closed it (idle, reset at 3 a.m.) it is opened again, once, before the
    request counts as failed. Every association and every request takes a token from BUCKET.

    With method "get", the association also offers every common storage class in the SCP role (C-GET
    sends the instances back on it) and ON_STORE gets each C-STORE event.
    """

    def __init__(
        self,
        modality: ModalityConfig,
        our_aet: str,
        *,
        method: Method,
        bucket: TokenBucket | None = None,
        on_store: StoreHandler | None = None,
        timeout: float = RESPONSE_TIMEOUT,
    ) -> None:
        self.modality = modality
        self.our_aet = our_aet
        self.method = method
        self.bucket = bucket
        self.on_store = on_store
        self.timeout = timeout
        self._assoc: Any = None
        self._lock = threading.Lock()

    # -- requests -------------------------------------------------------------------------------

    def find(self, level: str, keys: Mapping[str, str]) -> list[dict[str, str]]:
        """C-FIND (Study Root) at LEVEL with KEYS as matching and return keys; one dict per answer.
        Raises Unreachable (the node is gone, or timed out), RemoteError (a failure status)."""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

        query = _identifier(level, keys)

        def send(assoc: Any) -> list[dict[str, str]]:
            found = []
            for status, identifier in assoc.send_c_find(query, Find):
                code = _code(status)
                if code is None:
                    raise _Dead()
                if code in _PENDING and identifier is not None:
                    found.append({key: _text(identifier.get(key)) for key in keys})
                elif code != _SUCCESS:
                    raise RemoteError(f"{self.modality.display}: C-FIND failed (status 0x{code:04X})")
            return found

        return self._request(send, "C-FIND")

    def retrieve(self, keys: Mapping[str, str], level: str = "SERIES", destination: str = "") -> Retrieved:
        """C-MOVE to DESTINATION (an AE title the node knows) or C-GET (this association), by method.
        Raises ConfigError (the node says it does not know DESTINATION), Unreachable, Refused (a failure
        status)."""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Move

        query = _identifier(level, keys)
        what = "C-MOVE" if self.method == "move" else "C-GET"

        def send(assoc: Any) -> Retrieved:
            if self.method == "move":
                responses = assoc.send_c_move(query, destination, Move)
            else:
                responses = assoc.send_c_get(query, Get)
            last = Retrieved()
            for status, _identifier in responses:
                code = _code(status)
                if code is None:
                    raise _Dead()
                last = Retrieved(
                    completed=_count(status, "NumberOfCompletedSuboperations", last.completed),
                    failed=_count(status, "NumberOfFailedSuboperations", last.failed),
                    warning=_count(status, "NumberOfWarningSuboperations", last.warning),
                    status=code,
                )
            if last.status == _MOVE_DESTINATION_UNKNOWN:
                raise ConfigError(
                    f"{self.modality.display} does not know the move destination {destination!r}: add "
                    f"{destination} with this machine's address and --port to its DICOM modalities, or "
                    "use --method get"
                )
            if last.status not in (*_PENDING, _SUCCESS, _WARNING):
                raise Refused(f"{self.modality.display}: {what} failed (status 0x{last.status:04X})", last)
            return last

        return self._request(send, what)

    def close(self) -> None:
        """Release the association (abort it when the node does not answer the release)."""
        with self._lock:
            assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()
            if assoc.is_established:
                assoc.abort()

    # -- the association ------------------------------------------------------------------------

    def _request(self, send: Callable[[Any], Any], what: str) -> Any:
        for attempt in (1, 2):
            # the request's token first: an association may die while we wait for it (an idle one the
            # node closes), so it is looked at only once the request may go
            self._take()
            reused = self._assoc is not None and self._assoc.is_established
            assoc = self._association()
            try:
                try:
                    return send(assoc)
                except RuntimeError:  # pynetdicom: "must be established": it died just now
                    if assoc.is_established:
                        raise
                    raise _Dead() from None
            except _Dead:
                self._drop()
                # a kept association the node had closed meanwhile: a new one, at once, before anything
                # counts as failed; a fresh one that dies is the node's trouble (the engine waits)
                if attempt == 1 and reused:
                    log.info("%s: association closed by the node; opening a new one", self.modality.display)
                    continue
                raise self._unreachable(
                    f"{self.modality.display}: association aborted or no answer within "
                    f"{self.timeout:.0f} s during {what}"
                ) from None
        raise AssertionError("not reached")

    def _association(self) -> Any:
        with self._lock:
            if self._assoc is not None and self._assoc.is_established:
                return self._assoc
            self._assoc = None
        self._take()
        assoc = self._open()
        with self._lock:
            self._assoc = assoc
        return assoc

    def _open(self) -> Any:
        from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Move

        ae = AE(ae_title=self.our_aet)
        ae.add_requested_context(Find)
        roles = []
        handlers: list[Any] = []
        if self.method == "move":
            ae.add_requested_context(Move)
        else:
            ae.add_requested_context(Get)
            # 120 common storage classes: with FIND and GET within the 128 contexts an association has
            for context in StoragePresentationContexts:
                ae.add_requested_context(context.abstract_syntax, DEFAULT_TRANSFER_SYNTAXES)
                roles.append(build_role(context.abstract_syntax, scp_role=True))
            if self.on_store is not None:
                handlers.append((evt.EVT_C_STORE, self._stored))
        ae.acse_timeout = ae.connection_timeout = ASSOCIATE_TIMEOUT
        ae.dimse_timeout = ae.network_timeout = self.timeout
        return open_association(
            ae, self.modality, self.our_aet, self.bucket, ext_neg=roles or None, handlers=handlers
        )

    def _stored(self, event: Any) -> int:
        assert self.on_store is not None
        try:
            return self.on_store(event)
        except Exception as exc:  # pynetdicom would log a traceback holding the dataset
            log.error("C-GET: an instance could not be kept: %s", type(exc).__name__)
            return _OUT_OF_RESOURCES

    def _drop(self) -> None:
        with self._lock:
            assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.abort()

    def _take(self) -> None:
        if self.bucket is not None:
            self.bucket.acquire()

    def _unreachable(self, message: str) -> Unreachable:
        return Unreachable(message, remote=self.modality.name or self.modality.display, probe=self.probe)

    def probe(self) -> None:
        """C-ECHO the node (its association takes a token too): raises Unreachable while it does not
        answer."""
        echo(self.modality, self.our_aet, bucket=self.bucket)


class _Dead(Exception):
    """pynetdicom's sign of an association aborted, or of a response that did not come in time."""


def _identifier(level: str, keys: Mapping[str, str]) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return query


def _code(status: Any) -> int | None:
    code = getattr(status, "Status", None) if status else None
    return int(code) if code is not None else None


def _count(status: Any, keyword: str, before: int) -> int:
    value = getattr(status, keyword, None)
    return int(value) if value not in (None, "") else before


def _text(value: Any) -> str:
    """A C-FIND answer's value as text: a multi-valued one (ModalitiesInStudy) joined with backslashes."""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(one) for one in value)
    return str(value)


def run_bucket(modality: ModalityConfig, rate: str | None) -> TokenBucket | None:
    """The one rate limit of a run's requests to MODALITY: RATE ('700/min') with no burst above it (the
    seed's PACS reset every connection beyond 700/min), else the node's configured limit, else none."""
    from pacsflow.pacing import limiter_for, parse_rate

    return TokenBucket(parse_rate(rate), burst=1) if rate else limiter_for(modality.name)


class Sessions:
    """One Session per worker thread, all with the same node, method, rate limit and C-GET handler."""

    def __init__(
        self,
        modality: ModalityConfig,
        our_aet: str,
        *,
        method: Method,
        bucket: TokenBucket | None,
        on_store: StoreHandler | None = None,
    ) -> None:
        self.modality, self.our_aet, self.method = modality, our_aet, method
        self.bucket, self.on_store = bucket, on_store
        self._local = threading.local()
        self._all: list[Session] = []
        self._lock = threading.Lock()

    def get(self) -> Session:
        """This thread's session (made on first use)."""
        session: Session | None = getattr(self._local, "session", None)
        if session is None:
            session = Session(
                self.modality, self.our_aet, method=self.method, bucket=self.bucket, on_store=self.on_store
            )
            self._local.session = session
            with self._lock:
                self._all.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            sessions, self._all = self._all, []
        for session in sessions:
            session.close()
