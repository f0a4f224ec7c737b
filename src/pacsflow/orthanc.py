"""Orthanc REST client on httpx: explicit timeouts, one error hierarchy, capabilities, offline Orthanc IDs."""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from pacsflow.config import ServerConfig
from pacsflow.errors import (
    ConfigError,
    Forbidden,
    NotFound,
    PacsflowError,
    ServerError,
    Unauthorized,
    Unreachable,
)
from pacsflow.pacing import TokenBucket, limiter_for

log = logging.getLogger("pacsflow")

#: Orthanc before 1.12.2 gzips every answer a client accepts gzip for: 30x slower for DICOM payloads.
IDENTITY = {"Accept-Encoding": "identity"}
_TRANSIENT_STATUS = {500, 502, 503, 504}
#: a proxy's way of saying the Orthanc behind it does not answer: the server is down, not the request wrong
_DOWN_STATUS = {502, 503, 504}
#: how long a probe of a server that is down may take
PROBE_TIMEOUT = 10.0


_ORTHANC_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")
_UID = re.compile(r"\b\d+(?:\.\d+){2,}\b")


def route(path: str) -> str:
    """PATH with Orthanc IDs and DICOM UIDs replaced by `{id}`/`{uid}`: safe in a message, because
    Orthanc IDs are hashes of the patient's ID and the UIDs; the whole path goes into `detail`."""
    return _UID.sub("{uid}", _ORTHANC_ID.sub("{id}", path))


def orthanc_id(*uids: str) -> str:
    """Orthanc's ID: SHA-1 of `PatientID|StudyUID|SeriesUID|SOPUID`, as many parts as the level."""
    digest = hashlib.sha1("|".join(uids).encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


@dataclass(frozen=True)
class Capabilities:
    """What a server can do, derived from its version."""

    version: str
    api_version: int
    name: str

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return parse_version(self.version)

    @property
    def labels(self) -> bool:
        return self.version_tuple >= (1, 12, 0)

    @property
    def c_get(self) -> bool:
        """Orthanc can itself issue C-GET to a modality (1.12.6+)."""
        return self.version_tuple >= (1, 12, 6)

    @property
    def bulk_delete(self) -> bool:
        """`POST /tools/bulk-delete` deletes many resources in one request (1.9.4+; unknown IDs ignored)."""
        return self.version_tuple >= (1, 9, 4)

    @property
    def gzips_everything(self) -> bool:
        return self.version_tuple < (1, 12, 2)


def parse_version(text: str) -> tuple[int, ...]:
    """'1.10.1' -> (1, 10, 1); 'mainline' counts as newest."""
    if text.strip().lower() == "mainline":
        return (999,)
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class Orthanc:
    """A client for one Orthanc server; thread-safe, its pool sized to the workers that share it."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        pool_size: int = 8,
        retries: int = 2,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.config = config
        self.retries = retries
        #: the server's rate limit (`[rate_limits]`), shared by every client of it in this process
        self.limiter = limiter if limiter is not None else limiter_for(config.name)
        # Orthanc before 1.12.2 gzips every answer a client accepts gzip for, JSON listings included, and
        # its gzip costs more server CPU than the bytes it saves on a hospital network.
        headers = {"User-Agent": "pacsflow", **IDENTITY}
        auth = None
        if config.token is not None:
            headers["Authorization"] = f"Bearer {config.token.get_secret_value()}"
        elif config.user:
            password = config.password.get_secret_value() if config.password else ""
            auth = httpx.BasicAuth(config.user, password)
        self._http = httpx.Client(
            base_url=config.url,
            auth=auth,
            headers=headers,
            verify=_ssl_context(config),
            timeout=httpx.Timeout(config.timeout, connect=min(10.0, config.timeout)),
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
        )
        self._capabilities: Capabilities | None = None
        self._payloads = _PayloadChannel(config, headers) if _PayloadChannel.usable(config) else None

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def display(self) -> str:
        return self.config.display

    @property
    def remote(self) -> str:
        """The name outages and rate limits know this server by (never with credentials)."""
        return self.config.name or self.config.url

    def ping(self) -> None:
        """One quick `GET /system` without retries; raises Unreachable while the server is down.

        On a connection of its own: an outage outlives the client whose request found it (a follower
        closes its clients after every cycle), and its probes must go on working.
        """
        with Orthanc(self.config, pool_size=1, retries=0, limiter=self.limiter) as fresh:
            fresh.request("GET", "/system", retry=False, timeout=PROBE_TIMEOUT)

    def _unreachable(self, message: str, path: str | None = None) -> Unreachable:
        return Unreachable(message, remote=self.remote, probe=self.ping, detail=path)

    def close(self) -> None:
        self._http.close()
        if self._payloads is not None:
            self._payloads.close()

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        retry: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request; map failures to pacsflow errors; retry transient faults briefly when `retry`."""
        return self._with_retries(method, path, retry, lambda: self._http.request(method, path, **kwargs))

    def _with_retries(
        self, method: str, path: str, retry: bool, send: Callable[[], httpx.Response]
    ) -> httpx.Response:
        attempts = 1 + (self.retries if retry else 0)
        debug = log.isEnabledFor(logging.DEBUG)  # -v: each request, by route (no IDs), and each retry
        for attempt in range(attempts):
            if self.limiter is not None:
                self.limiter.acquire()
            try:
                started = time.perf_counter()
                response = send()
                if debug:
                    elapsed = (time.perf_counter() - started) * 1000
                    log.debug(
                        "%s: %s %s -> HTTP %d in %.0f ms",
                        self.remote,
                        method,
                        route(path),
                        response.status_code,
                        elapsed,
                    )
                self._raise_for_status(response, method, path)
                return response
            except TimeoutError as exc:
                error: PacsflowError = self._unreachable(
                    f"{self.display}: timed out on {method} {route(path)} ({exc})"
                )
            except (OSError, http.client.HTTPException) as exc:
                error = self._unreachable(f"cannot reach {self.display}: {_describe_socket_error(exc)}")
            except httpx.TimeoutException as exc:
                error = self._unreachable(
                    f"{self.display}: timed out on {method} {route(path)} ({_kind(exc)})", path
                )
            except httpx.TransportError as exc:
                error = self._unreachable(f"cannot reach {self.display}: {_describe_transport(exc)}")
            except PacsflowError as exc:
                error = exc
            if not error.transient or attempt == attempts - 1:
                raise error
            # Short, bounded backoff: long waits belong to the engine, not to a worker thread.
            delay = min(2.0, 0.25 * 4**attempt) * (0.5 + random.random())
            log.debug("%s; try %d of %d in %.1f s", error.reason, attempt + 2, attempts, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _raise_for_status(self, response: httpx.Response, method: str, path: str) -> None:
        status = response.status_code
        if status < 400:
            return
        if status == 401:
            raise Unauthorized(f"{self.display}: {login_refused(self.config)}")
        if status == 403:
            raise Forbidden(f"{self.display}: not allowed to {method} {route(path)} (HTTP 403)", detail=path)
        if status == 404:
            raise NotFound(f"{self.display}: {route(path)} not found", detail=path)
        if status in _DOWN_STATUS:
            raise self._unreachable(
                f"{self.display}: not available (HTTP {status}) on {method} {route(path)}", path
            )
        raise ServerError(
            f"{self.display}: {method} {route(path)} failed (HTTP {status}): {_orthanc_message(response)}",
            status=status,
            transient=status in _TRANSIENT_STATUS,
            detail=path,
        )

    def get_json(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None).json()

    def post_json(self, path: str, body: Any, *, retry: bool = True) -> Any:
        response = self.request("POST", path, json=body, retry=retry)
        return response.json() if response.content else None

    def put_json(self, path: str, body: Any) -> Any:
        response = self.request("PUT", path, json=body)
        return response.json() if response.content else None

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    # -- server ---------------------------------------------------------------------------------

    def system(self) -> dict[str, Any]:
        return self.get_json("/system")

    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            info = self.system()
            self._capabilities = Capabilities(
                version=str(info.get("Version", "0")),
                api_version=int(info.get("ApiVersion", 0)),
                name=str(info.get("Name", "")),
            )
        return self._capabilities

    def statistics(self) -> dict[str, Any]:
        return self.get_json("/statistics")

    def run_job(
        self, path: str, body: dict[str, Any], *, poll: float = 0.5, limit: float = 6 * 3600.0
    ) -> dict[str, Any]:
        """POST BODY to PATH as an asynchronous job and wait for its end; returns the job (or the answer of a
        server that does the call synchronously: Orthanc 1.10's /modalities/{name}/move ignores
        "Asynchronous", so the request may take as long as the job, up to LIMIT seconds). Raises ServerError
        with Orthanc's reason when the job fails, or has not ended after LIMIT seconds (then cancelled)."""
        started = time.monotonic()
        timeout = httpx.Timeout(self._http.timeout.connect, read=limit)
        response = self.request(
            "POST", path, json={**body, "Asynchronous": True}, retry=False, timeout=timeout
        )
        answer = response.json() if response.content else {}
        if not isinstance(answer, dict) or "ID" not in answer:
            return answer if isinstance(answer, dict) else {}
        job = str(answer["ID"])
        while True:
            info = self.get_json(f"/jobs/{job}")
            state = info.get("State")
            if state == "Success":
                return info
            if state == "Failure":
                reason = info.get("ErrorDetails") or info.get("ErrorDescription") or "the job failed"
                raise ServerError(f"{path}: {reason}", status=info.get("ErrorCode"))
            if time.monotonic() - started > limit:
                self.request("POST", f"/jobs/{job}/cancel")
                raise ServerError(
                    f"{path}: the job did not end within {limit:.0f} s; cancelled", transient=True
                )
            time.sleep(poll)

    # -- resources ------------------------------------------------------------------------------

    def ids(self, level: str) -> list[str]:
        """Every resource ID at a level: 'patients', 'studies', 'series' or 'instances'."""
        return self.get_json(f"/{level}")

    def resource(self, level: str, resource_id: str) -> dict[str, Any]:
        return self.get_json(f"/{level}/{resource_id}")

    def children(self, level: str, resource_id: str, child_level: str) -> list[dict[str, Any]]:
        """Expanded child resources, e.g. children('studies', id, 'instances')."""
        return self.get_json(f"/{level}/{resource_id}/{child_level}")

    def instance_ids_of(self, level: str, resource_id: str) -> list[str]:
        """IDs of the instances under a patient, study or series; [] when the resource is absent."""
        try:
            return [item["ID"] for item in self.children(level, resource_id, "instances")]
        except NotFound:
            return []

    def find(
        self, level: str, query: dict[str, str], *, expand: bool = False, labels: Sequence[str] = ()
    ) -> list[Any]:
        """/tools/find; with LABELS, only resources that carry every one of them (Orthanc 1.12+)."""
        body: dict[str, Any] = {"Level": level, "Query": query, "Expand": expand}
        if labels:
            body |= {"Labels": list(labels), "LabelsConstraint": "All"}
        return self.post_json("/tools/find", body)

    def delete_resource(self, level: str, resource_id: str) -> None:
        self.delete(f"/{level}/{resource_id}")

    # -- DICOM payloads -------------------------------------------------------------------------

    def upload(self, data: bytes) -> dict[str, Any]:
        """POST one DICOM file; Orthanc's answer (`ID`, `Status`: Success or AlreadyStored, parents)."""
        if self._payloads is not None:
            response = self._with_retries(
                "POST", "/instances", True, lambda: self._payloads.post("/instances", data)
            )
        else:
            headers = {**IDENTITY, "Content-Type": "application/dicom"}
            response = self.request("POST", "/instances", content=data, headers=headers)
        answer = response.json()
        if isinstance(answer, list):  # a ZIP upload answers a list; one file answers one object
            answer = answer[0] if answer else {}
        return answer

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance, without gzip."""
        path = f"/instances/{instance_id}/file"
        if self._payloads is not None:
            payloads = self._payloads
            return self._with_retries("GET", path, True, lambda: payloads.send("GET", path)).content
        return self.request("GET", path, headers=IDENTITY).content

    def file_info(self, instance_id: str) -> dict[str, Any]:
        """The size and MD5 Orthanc keeps of an instance's file (`UncompressedSize`, `UncompressedMD5`)."""
        path = f"/instances/{instance_id}/attachments/dicom/info"
        if self._payloads is not None:
            payloads = self._payloads
            return self._with_retries("GET", path, True, lambda: payloads.send("GET", path)).json()
        return self.get_json(path)

    def stream_instance_file(self, instance_id: str, out: IO[bytes], chunk_size: int = 1 << 20) -> int:
        """Copy an instance's file into `out` without holding it whole; returns the byte count."""
        written = 0
        for chunk in self._stream("GET", f"/instances/{instance_id}/file", chunk_size):
            out.write(chunk)
            written += len(chunk)
        return written

    def _stream(self, method: str, path: str, chunk_size: int) -> Iterator[bytes]:
        if self._payloads is not None and method == "GET":
            yield from self._stream_payload(path, chunk_size)
            return
        if self.limiter is not None:
            self.limiter.acquire()
        try:
            with self._http.stream(method, path, headers=IDENTITY) as response:
                log.debug(
                    "%s: %s %s -> HTTP %d (streamed)", self.remote, method, route(path), response.status_code
                )
                if response.status_code >= 400:
                    response.read()
                    self._raise_for_status(response, method, path)
                yield from response.iter_bytes(chunk_size)
        except httpx.TimeoutException as exc:
            raise self._unreachable(
                f"{self.display}: timed out on {method} {route(path)} ({_kind(exc)})", path
            ) from None
        except httpx.TransportError as exc:
            raise self._unreachable(f"cannot reach {self.display}: {_describe_transport(exc)}") from None

    def _stream_payload(self, path: str, chunk_size: int) -> Iterator[bytes]:
        """_stream on the payload channel, its errors mapped as request() maps them; no retry, since the
        caller holds part of the file already (its item is tried again)."""
        payloads = self._payloads
        assert payloads is not None
        opened: list[Iterator[bytes]] = []

        def start() -> httpx.Response:
            status, body = payloads.stream(path, chunk_size)
            if isinstance(body, httpx.Response):
                return body  # an error answer: mapped (404 NotFound...) by _with_retries
            opened.append(body)
            return httpx.Response(status, request=httpx.Request("GET", payloads.url + path))

        self._with_retries("GET", path, False, start)
        try:
            yield from opened[0]
        except TimeoutError as exc:
            raise self._unreachable(f"{self.display}: timed out on GET {route(path)} ({exc})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(f"cannot reach {self.display}: {_describe_socket_error(exc)}") from None


class _PayloadChannel:
    """DICOM files POSTed and fetched (and their attachment info) on the standard library's http.client,
    one kept-alive connection per thread.

    Measured on these machines: 0.7 ms of CPU per 525 KB POST against httpx's 1.8 ms. Uploads and
    downloads are bound by Python's GIL, so this is the difference between keeping up with Orthanc and
    not. Everything else (and every server reached through a proxy) stays on httpx.
    """

    def __init__(self, config: ServerConfig, headers: dict[str, str]) -> None:
        parts = urlsplit(config.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = config.timeout
        self.url = config.url
        self.headers = {**headers, **IDENTITY, "Content-Type": "application/dicom"}
        if config.user and config.token is None:
            password = config.password.get_secret_value() if config.password else ""
            token = base64.b64encode(f"{config.user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self.get_headers = {name: value for name, value in self.headers.items() if name != "Content-Type"}
        self.context = _ssl_context(config) if self.https else None
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @staticmethod
    def usable(config: ServerConfig) -> bool:
        """Not through a proxy: http.client would not go where httpx goes."""
        host = urlsplit(config.url).hostname or ""
        proxies = urllib.request.getproxies()
        return not (proxies.get("http") or proxies.get("https") or proxies.get("all")) or bool(
            urllib.request.proxy_bypass(host)
        )

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self.context
                )
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def post(self, path: str, data: bytes) -> httpx.Response:
        return self.send("POST", path, data)

    def send(self, method: str, path: str, data: bytes | None = None) -> httpx.Response:
        """One request, its whole answer read (a DICOM file GET or POST, a small JSON answer)."""
        conn = self._connection()
        headers = self.headers if data is not None else self.get_headers
        try:
            conn.request(method, self.prefix + path, body=data, headers=headers)
            reply = conn.getresponse()
            body = reply.read()
        except BaseException:
            conn.close()  # a half-used connection is never reused; the next call opens a new one
            raise
        if reply.will_close:
            conn.close()
        return httpx.Response(
            reply.status,
            headers=reply.getheaders(),
            content=body,
            request=httpx.Request(method, self.url + path),
        )

    def stream(self, path: str, chunk_size: int) -> tuple[int, Iterator[bytes] | httpx.Response]:
        """GET PATH: (status, its body in chunks) when it succeeded, else (status, the whole answer)."""
        conn = self._connection()
        try:
            conn.request("GET", self.prefix + path, headers=self.get_headers)
            reply = conn.getresponse()
            if reply.status >= 400:
                body = reply.read()
                if reply.will_close:
                    conn.close()
                request = httpx.Request("GET", self.url + path)
                return reply.status, httpx.Response(reply.status, content=body, request=request)
        except BaseException:
            conn.close()
            raise
        return reply.status, self._chunks(conn, reply, chunk_size)

    @staticmethod
    def _chunks(
        conn: http.client.HTTPConnection, reply: http.client.HTTPResponse, chunk_size: int
    ) -> Iterator[bytes]:
        try:
            while chunk := reply.read(chunk_size):
                yield chunk
        except BaseException:
            conn.close()
            raise
        if reply.will_close or not reply.isclosed():  # not read to its end: the connection is unusable
            conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def login_refused(config: ServerConfig) -> str:
    """Why a server answered 401, from what we sent, and what to set."""
    if config.name and "://" not in config.name:
        variable = f"PACSFLOW_SERVERS__{config.name.upper().replace('-', '_')}__"
        where = f"in [servers.{config.name}] of pacsflow.toml, or {variable}PASSWORD"
    else:
        where = "in the URL (http://USER:PASSWORD@host:port), or name the server in pacsflow.toml"
    if config.token is not None:
        where = where.replace("PASSWORD", "TOKEN")
        return f"the server refused our bearer token (HTTP 401): set a valid token {where}"
    if not config.user:
        return f"the server needs a login and none was sent (HTTP 401): set user and password {where}"
    if config.password is None or not config.password.get_secret_value():
        return f"sent user {config.user!r} with no password (HTTP 401): set its password {where}"
    return f"the server refused user {config.user!r} with the password given (HTTP 401): check them {where}"


def _ssl_context(config: ServerConfig) -> ssl.SSLContext:
    """The TLS settings of CONFIG; a CA bundle that cannot be read is a ConfigError naming it."""
    verify = config.verify_tls
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if not isinstance(verify, str):
        return ssl.create_default_context()
    try:
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "not a PEM CA bundle"
        raise ConfigError(f"{config.display}: cannot use verify_tls = {verify!r}: {reason}") from None


def _describe_socket_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, http.client.HTTPException | ConnectionError):
        return f"connection dropped ({type(exc).__name__})"
    return getattr(exc, "strerror", None) or type(exc).__name__


def _orthanc_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        message = str(body.get("Message") or body.get("OrthancError") or "")
        details = str(body.get("Details") or "")
        return f"{message}: {details}" if details and details != message else message or str(body)[:200]
    return str(body)[:200]


def _kind(exc: httpx.TimeoutException) -> str:
    return {
        httpx.ConnectTimeout: "connect timeout",
        httpx.ReadTimeout: "read timeout",
        httpx.WriteTimeout: "write timeout",
        httpx.PoolTimeout: "no free connection",
    }.get(type(exc), "timeout")


def _describe_transport(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection dropped ({text})"
    return text
