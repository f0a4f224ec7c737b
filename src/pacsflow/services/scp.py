"""The storage SCP: C-ECHO and C-STORE of every storage class, instances kept as received, in the ledger."""

from __future__ import annotations

import errno
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pacsflow.config import Settings, find_name
from pacsflow.dicomfiles import InstanceUIDs, read_uids, write_atomically
from pacsflow.errors import ConfigError, PacsflowError, public_text
from pacsflow.layout import safe_part
from pacsflow.ledger import DONE, FAILED, Ledger, PlannedItem

log = logging.getLogger("pacsflow")

OPERATION = "scp"
#: the kind of the ledger items: one per instance received, keyed by its SOPInstanceUID
RECEIVED = "received"
SUCCESS = 0x0000
#: C-STORE failure statuses (PS3.4 B.2.3): "Refused: Out of Resources", "Error: Cannot understand"
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: pynetdicom's own defaults, set here so that every wait is visibly bounded: an association request
#: answered within ACSE, a message within DIMSE, and an idle association closed after NETWORK seconds
ACSE_TIMEOUT, DIMSE_TIMEOUT, NETWORK_TIMEOUT = 30.0, 30.0, 60.0
#: how long a stop waits for the associations in progress before it aborts them
DRAIN_TIMEOUT = 30.0


class Destination(Protocol):
    """Where received instances go."""

    #: how the listening line and the ledger name it, and what is done with instances ("writing to")
    label: str
    action: str

    def store(self, data: bytes, uids: InstanceUIDs) -> str:
        """Keep DATA (a PS3.10 file); returns where it went. Raises OSError or PacsflowError."""
        ...

    def close(self) -> None: ...


class FolderDestination:
    """DIR/PatientID/StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID.dcm, each file written atomically."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.label, self.action = str(root), "writing to"

    def store(self, data: bytes, uids: InstanceUIDs) -> str:
        relative = Path(
            safe_part(uids.patient_id, "unknown-patient"),
            safe_part(uids.study_uid, "unknown-study"),
            safe_part(uids.series_uid, "unknown-series"),
            f"{safe_part(uids.sop_uid, 'unknown-instance')}.dcm",
        )
        # a temporary name in the same folder, then one rename: a reader never sees half a file (no
        # fsync: a receipt is not a backup)
        write_atomically(self.root / relative, data)
        return str(relative)

    def close(self) -> None:
        pass


class ServerDestination:
    """An Orthanc server: each instance posted as received."""

    def __init__(self, settings: Settings, spec: str, connections: int) -> None:
        from pacsflow.ops.servers import connect, preflight_server

        self.label, self.action = settings.public_spec(spec), "sending to"
        self.server = connect(settings, spec, connections)
        try:
            preflight_server(self.server)  # a wrong password or a server down: said once, at the start
        except BaseException:
            self.server.close()
            raise

    def store(self, data: bytes, uids: InstanceUIDs) -> str:
        from pacsflow.stored import check_stored

        check_stored(self.server.upload(data), expected_id=uids.instance_id)
        return self.label

    def close(self) -> None:
        self.server.close()


def destination_for(settings: Settings, spec: str, connections: int) -> Destination:
    """SPEC as a destination: a configured server name or a URL is a server, anything else a folder
    (`./main` is the folder even when a server is called main). Raises ConfigError for a DICOM node,
    PreflightError/Unauthorized for a server that cannot be used, OSError for a folder not made."""
    if settings.is_modality(spec):
        raise ConfigError(f"--to {spec!r} is a DICOM modality; give a folder or an Orthanc server")
    if "://" in spec or find_name(spec, settings.servers) is not None:
        return ServerDestination(settings, spec, connections)
    return FolderDestination(Path(spec))


@dataclass
class Received:
    """What one SCP session did (this process only): instances kept, their bytes, those refused."""

    run_id: str
    instances: int = 0
    nbytes: int = 0
    failures: int = 0


class _Recorder:
    """Writes receipts into the ledger from one thread, in batches: association threads never wait
    for the database, and SQLite sees one writer."""

    BATCH = 500

    def __init__(self, ledger: Ledger, run_id: str) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.queue: queue.Queue[PlannedItem | None] = queue.Queue()
        self.seen: set[str] = set()
        self.thread = threading.Thread(target=self._run, name="scp-recorder", daemon=True)
        self.thread.start()

    def put(self, item: PlannedItem) -> None:
        self.queue.put(item)

    def close(self) -> None:
        """Write what is queued, then stop."""
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        done = False
        while not done:
            batch = [self.queue.get()]
            while len(batch) < self.BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            done = None in batch
            self._write([item for item in batch if item is not None])

    def _write(self, batch: list[PlannedItem]) -> None:
        if not batch:
            return
        # the same instance sent again (after a failure, or twice) overwrites its item: the last receipt
        # counts; this process is the only writer of its run, so its memory of keys is the ledger's
        again = [item for item in batch if item.key in self.seen]
        new = [item for item in batch if item.key not in self.seen]
        try:
            self.ledger.add_items(self.run_id, new)
            self.ledger.resettle(self.run_id, again)
        except Exception as exc:  # the files are kept: losing their record must not stop receiving
            log.error("scp: could not record %d receipts in the ledger: %s", len(batch), type(exc).__name__)
            return
        self.seen.update(item.key for item in batch)


class StorageSCP:
    """A pynetdicom storage SCP that hands each instance to a destination and records it.

    start() listens (in pynetdicom's server thread; each association gets its own thread); stop()
    stops accepting, lets the associations in progress finish (DRAIN_TIMEOUT at most, then aborts
    them) and writes the last receipts.
    """

    def __init__(
        self,
        destination: Destination,
        *,
        aet: str,
        port: int,
        bind: str = "0.0.0.0",
        accept_aets: Sequence[str] = (),
        max_associations: int = 10,
        ledger: Ledger | None,
        run_id: str,
        log_phi: bool = False,
    ) -> None:
        """LEDGER None: receipts are not recorded (a retrieve run checks each series instead)."""
        self.destination = destination
        self.aet, self.port, self.bind = aet, port, bind
        self.accept_aets = list(accept_aets)
        self.max_associations = max_associations
        #: connections any node opened, accepted or not: a node that connected knows our AE title
        self.connections = 0
        self.run_id = run_id
        self.log_phi = log_phi
        self.received = Received(run_id)
        self._lock = threading.Lock()
        self._recorder = _Recorder(ledger, run_id) if ledger is not None else None
        self._server: Any = None

    @property
    def address(self) -> tuple[str, int]:
        """The host and port listened on (the port the system gave when asked for port 0)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Listen. Raises ConfigError when the address cannot be bound (in use, not ours)."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        from pacsflow.logs import hide_pynetdicom_identifiers

        hide_pynetdicom_identifiers()

        ae = AE(ae_title=self.aet)
        ae.add_supported_context(Verification)
        # every transfer syntax pynetdicom knows: a compressed image is accepted and kept compressed
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.require_calling_aet = self.accept_aets  # others: "calling AE title not recognised"
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = ACSE_TIMEOUT, DIMSE_TIMEOUT, NETWORK_TIMEOUT
        ae.maximum_associations = self.max_associations
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_OPEN, self._on_connection),
        ]
        try:
            self._server = ae.start_server((self.bind, self.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            if self._recorder is not None:
                self._recorder.close()
            raise ConfigError(
                f"cannot listen on {self.bind}:{self.port}: {exc.strerror or type(exc).__name__}"
            ) from None

    def stop(self, wait: float = DRAIN_TIMEOUT) -> Received:
        """Stop accepting, let running associations finish (WAIT seconds at most), record the rest."""
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()  # no new association from here on
            running = server.active_associations
            deadline = time.monotonic() + wait
            try:
                for assoc in running:
                    assoc.join(max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
                pass
            for assoc in running:
                if assoc.is_alive():
                    log.warning("scp: aborting the association from %s still open", assoc.requestor.ae_title)
                    assoc.abort()
            if self._recorder is not None:
                self._recorder.close()
        return self.received

    def _on_rejected(self, event: Any) -> None:
        log.warning(
            "scp: association from %s refused (calling AE title not accepted, or more than %d at once)",
            _calling(event),
            self.max_associations,
        )

    def _on_connection(self, event: Any) -> None:
        with self._lock:
            self.connections += 1

    def _on_store(self, event: Any) -> int:
        """pynetdicom's C-STORE handler: keep the instance, answer its status, never raise."""
        kept = keep(event, self.destination, self.log_phi)
        self._record(kept, _calling(event), event)
        return kept.status

    def _record(self, kept: Kept, calling: str, event: Any) -> None:
        with self._lock:
            if kept.status == SUCCESS:
                self.received.instances += 1
                self.received.nbytes += kept.size
            else:
                self.received.failures += 1
        if self._recorder is None:
            return
        result = {
            "calling_aet": calling,
            "bytes": kept.size,
            "status": f"0x{kept.status:04X}",
            "transfer_syntax": str(getattr(event.context, "transfer_syntax", "") or ""),
        }
        if kept.where:
            result["to"] = kept.where
        self._recorder.put(
            PlannedItem(
                RECEIVED,
                kept.key or f"unknown-{secrets.token_hex(8)}",
                status=DONE if kept.status == SUCCESS else FAILED,
                note=kept.note,
                result=result,
                nbytes=kept.size if kept.status == SUCCESS else 0,
            )
        )


@dataclass
class Kept:
    """What became of one instance received: its SOPInstanceUID, the status answered, where it went."""

    key: str
    status: int
    size: int
    where: str = ""
    note: str | None = None


def keep(event: Any, destination: Destination, log_phi: bool = False, who: str = "scp") -> Kept:
    """Hand the instance of a C-STORE EVENT to DESTINATION as received (never decoded again); the
    status to answer: 0xA700 for a full disk, 0xC000 for anything else that failed. Never raises."""
    calling = _calling(event)
    key, status, where, note, shown = "", SUCCESS, "", None, ""
    data = b""
    try:
        data = event.encoded_dataset()  # the bytes as sent, with a file meta
        uids = read_uids(data, "received instance")
        key = uids.sop_uid
        where = destination.store(data, uids)
    except OSError as exc:
        status = OUT_OF_RESOURCES if exc.errno in _DISK_FULL else CANNOT_UNDERSTAND
        note = exc.strerror or type(exc).__name__
        shown = f"{note} ({exc.filename})" if log_phi and exc.filename else note
    except PacsflowError as exc:
        status, note, shown = CANNOT_UNDERSTAND, str(exc), public_text(exc, log_phi)
    except Exception as exc:  # pynetdicom would answer 0xC211 and log a traceback with our data
        status, note = CANNOT_UNDERSTAND, f"unexpected {type(exc).__name__}"
        shown = f"{note}: {exc}" if log_phi else note
    if status != SUCCESS:
        log.error("%s: C-STORE from %s refused with status 0x%04X: %s", who, calling, status, shown)
    return Kept(key or _requested_uid(event), status, len(data) if status == SUCCESS else 0, where, note)


def _calling(event: Any) -> str:
    """The AE title that sent EVENT's instance: the association's other side (on a C-GET we asked for,
    the node we associated with; on our storage SCP, the node that associated with us)."""
    assoc = event.assoc
    other = assoc.acceptor if getattr(assoc, "is_requestor", False) else assoc.requestor
    return str(other.ae_title).strip()


def _requested_uid(event: Any) -> str:
    """The SOPInstanceUID the C-STORE request names (what a failed receipt is recorded under)."""
    return str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")


def serve(
    settings: Settings,
    ledger: Ledger,
    to: str,
    *,
    aet: str | None = None,
    port: int | None = None,
    bind: str = "0.0.0.0",
    accept_aets: Sequence[str] = (),
    stop: threading.Event,
    log_phi: bool = False,
    on_listening: Callable[[StorageSCP], None] | None = None,
) -> Received:
    """Receive into TO (a folder or an Orthanc server) until STOP is set, as one run of the ledger whose
    items are the instances received; the run ends stopped. Raises ConfigError (bad destination, the
    port cannot be bound), PreflightError/Unauthorized (a server that cannot be used), OSError (a
    folder that cannot be made)."""
    aet = aet or settings.aet
    port = settings.port if port is None else port
    destination = destination_for(settings, to, connections=10)  # pynetdicom's 10 associations at most
    params = {
        "aet": aet,
        "port": port,
        "bind": bind,
        "to": destination.label if isinstance(destination, ServerDestination) else str(Path(to).absolute()),
        "accept_aet": list(accept_aets),
    }
    try:
        run_id = ledger.create_run(OPERATION, params)
        ledger.set_status(run_id, "running")
        scp = StorageSCP(
            destination,
            aet=aet,
            port=port,
            bind=bind,
            accept_aets=accept_aets,
            ledger=ledger,
            run_id=run_id,
            log_phi=log_phi,
        )
        try:
            scp.start()
        except ConfigError as exc:
            ledger.set_status(run_id, "failed", {"error": str(exc)})
            raise
        started = time.monotonic()
        try:
            if on_listening is not None:
                on_listening(scp)
            stop.wait()
        finally:
            received = scp.stop()
            run = ledger.run(run_id)
            ledger.set_status(
                run_id,
                "stopped",
                {"counts": run.counts, "bytes": run.bytes, "elapsed": round(time.monotonic() - started, 3)},
            )
    finally:
        destination.close()
    return received
