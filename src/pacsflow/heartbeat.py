"""Heartbeat pings (healthchecks.io style) sent in the background: they never slow or stop the work."""

from __future__ import annotations

import logging
import queue
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import httpx

log = logging.getLogger("pacsflow")

_CLOSE = ""  # the worker's signal to finish; never a ping's suffix


class Heartbeat:
    """Pings URL/start when a run starts, URL on success and URL/fail on failure.

    Pings go out one after another from one daemon thread, in the order asked (a `start` arriving after
    its `success` would read as a run that never ended). A ping that fails is one warning line without
    the URL, which holds the check's secret token; with URL None every method does nothing.
    """

    def __init__(self, url: str | None, timeout: float = 10.0) -> None:
        self.url = url or None
        self.timeout = timeout
        self._pings: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """The run starts."""
        self._send("/start")

    def success(self) -> None:
        """The run ended well."""
        self._send("/")

    def fail(self) -> None:
        """The run failed."""
        self._send("/fail")

    def close(self) -> None:
        """Wait at most `timeout` seconds for pings not yet sent; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._pings.put(_CLOSE)
            thread.join(self.timeout)

    def _send(self, suffix: str) -> None:
        if self.url is None:
            return
        with self._lock:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pacsflow-heartbeat", daemon=True)
                self._thread.start()
            self._pings.put(suffix)

    def _run(self) -> None:
        assert self.url is not None
        with httpx.Client(timeout=self.timeout, follow_redirects=True) as client:
            while (suffix := self._pings.get()) != _CLOSE:
                what = suffix.strip("/") or "success"
                started = time.monotonic()
                try:
                    answer = client.get(_ping_url(self.url, suffix))
                except Exception as exc:  # a ping must never stop the work, whatever went wrong
                    # the exception's text may quote the URL: its type says enough
                    log.warning("heartbeat ping %s failed (%s); the work goes on", what, type(exc).__name__)
                    continue
                if answer.is_error:
                    log.warning(
                        "heartbeat ping %s answered HTTP %d; the work goes on", what, answer.status_code
                    )
                else:
                    log.debug("heartbeat ping %s sent in %.2fs", what, time.monotonic() - started)


def _ping_url(url: str, suffix: str) -> str:
    """URL with SUFFIX ('/start', '/fail', '/') added to its path, its query kept."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + suffix.rstrip("/")
    return urlunsplit(parts._replace(path=path or "/"))
