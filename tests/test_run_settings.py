"""Settings that shape a run do what they say: rate limits, heartbeat pings, a worker waiting for a server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from tests.conftest import PACSFLOW, run_cli, wait_for
from tests.test_heartbeat import PingServer, pings  # noqa: F401 - the fixture


def test_a_rate_limit_paces_every_request_to_its_server(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    # `a` at 10 requests/s (a capital in the key on purpose: names match whatever their case)
    with config_file.open("a") as fh:
        fh.write('\n[rate_limits]\n"A" = "10/s"\n')
    started = time.monotonic()
    result = run_cli("populate", "--to", "a", "--instances", "50", "--pixels", "8", cwd=workdir)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert client_a.statistics()["CountInstances"] == 50
    # 50 uploads and the preflight requests, a burst of 10 then 10/s: at least four seconds
    assert elapsed >= 4.0


def test_heartbeat_pings_start_and_success_or_fail(
    workdir: Path,
    config_file: Path,
    client_a: Orthanc,
    pings: PingServer,  # noqa: F811
) -> None:
    # a top-level key goes before the first table
    config_file.write_text(f'heartbeat_url = "{pings.base}/ping/check-1"\n' + config_file.read_text())
    ok = run_cli("populate", "--to", "a", "--instances", "2", "--pixels", "8", cwd=workdir)
    assert ok.returncode == 0, ok.stderr
    assert pings.paths == ["/ping/check-1/start", "/ping/check-1"]
    bad = workdir / "broken"
    bad.mkdir()
    (bad / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 10)  # DICOM magic, nothing behind it
    failed = run_cli("upload", str(bad), "--to", "a", cwd=workdir)
    assert failed.returncode == 1
    assert pings.paths[2:] == ["/ping/check-1/start", "/ping/check-1/fail"]
    assert "check-1" not in ok.stderr + failed.stderr  # the URL's token is never logged


def test_a_worker_comes_back_to_a_run_whose_server_was_down(
    workdir: Path, orthanc_b: LocalOrthanc, client_b: Orthanc
) -> None:
    planned = run_cli("populate", "--to", orthanc_b.url, "--instances", "6", "--plan-only", cwd=workdir)
    assert planned.returncode == 0, planned.stderr
    orthanc_b.kill()  # the worker's first try of the run fails its preflight
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    worker = subprocess.Popen(
        [*PACSFLOW, "worker", "--poll", "0.2"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    orthanc_b.start()
    with Orthanc(orthanc_b.server_config()) as server:
        wait_for(lambda: server.statistics()["CountInstances"] == 6, "the worker to come back", worker)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=30)
    assert "trying it again in 15s" in err
