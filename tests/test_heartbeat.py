"""Heartbeat pings: healthchecks.io paths, sent in the background, failures one warning without the URL."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pacsflow import heartbeat
from pacsflow.heartbeat import Heartbeat

TOKEN = "tok-5e3c2a"  # heartbeat URLs embed a secret: it must never reach a log line


class PingServer(ThreadingHTTPServer):
    """Records each request's path; `/slow/...` answers after two seconds, `/missing/...` with 404."""

    daemon_threads = True
    block_on_close = False  # a slow answer still pending must not hold the test up

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PingHandler)
        self.paths: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class PingHandler(BaseHTTPRequestHandler):
    server: PingServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path.startswith("/slow/"):
            time.sleep(2)
        self.send_response(404 if self.path.startswith("/missing/") else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture
def pings() -> Iterator[PingServer]:
    server = PingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_start_success_fail_hit_the_healthchecks_paths_in_order(pings: PingServer) -> None:
    beat = Heartbeat(f"{pings.base}/ping/{TOKEN}/")
    beat.start()
    beat.success()
    beat.fail()
    beat.close()
    assert pings.paths == [f"/ping/{TOKEN}/start", f"/ping/{TOKEN}", f"/ping/{TOKEN}/fail"]
    beat.start()  # after close: nothing more is sent
    beat.close()
    assert len(pings.paths) == 3


def test_query_of_the_url_is_kept(pings: PingServer) -> None:
    beat = Heartbeat(f"{pings.base}/ping/{TOKEN}?create=1")
    beat.start()
    beat.close()
    assert pings.paths == [f"/ping/{TOKEN}/start?create=1"]


def test_unreachable_url_does_not_raise_and_logs_without_the_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pacsflow")
    url = f"http://127.0.0.1:{closed_port()}/ping/{TOKEN}"
    beat = Heartbeat(url, timeout=5)
    beat.start()
    beat.close()
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert [record.getMessage() for record in warnings] == [
        "heartbeat ping start failed (ConnectError); the work goes on"
    ]
    assert TOKEN not in caplog.text and url not in caplog.text


def test_error_answer_logs_its_status_without_the_url(
    pings: PingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pacsflow")
    beat = Heartbeat(f"{pings.base}/missing/{TOKEN}")
    beat.fail()
    beat.close()
    assert pings.paths == [f"/missing/{TOKEN}/fail"]
    assert "heartbeat ping fail answered HTTP 404; the work goes on" in caplog.messages
    assert TOKEN not in caplog.text


def test_slow_server_delays_neither_the_caller_nor_close_beyond_its_timeout(pings: PingServer) -> None:
    beat = Heartbeat(f"{pings.base}/slow/{TOKEN}", timeout=0.5)
    started = time.monotonic()
    beat.start()
    assert time.monotonic() - started < 0.3  # a blocking ping would take its 0.5 s timeout (the server: 2 s)
    started = time.monotonic()
    beat.close()
    assert time.monotonic() - started < 0.5 + 0.25
    assert pings.paths == [f"/slow/{TOKEN}/start"]


@pytest.mark.parametrize("url", [None, ""])
def test_without_url_every_method_does_nothing(
    url: str | None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clients: list[object] = []
    monkeypatch.setattr(heartbeat.httpx, "Client", lambda *args, **kwargs: clients.append(args))
    caplog.set_level(logging.DEBUG, logger="pacsflow")
    beat = Heartbeat(url)
    beat.start()
    beat.success()
    beat.fail()
    beat.close()
    assert clients == [] and caplog.records == []
