"""No password in the ledger or the output of any run command; credentials come back at resume."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from pacsflow.ledger import Ledger
from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from tests.conftest import PACSFLOW, PASSWORD, USER, ledger_path, run_cli, wait_for


def ledger_file(workdir: Path) -> Path:
    return ledger_path(workdir)


def ledger_bytes(workdir: Path) -> bytes:
    """The SQLite ledger with its write-ahead log: whatever a reader of the files could see."""
    path = ledger_path(workdir)
    return b"".join(file.read_bytes() for file in path.parent.glob("ledger.db*"))


def test_no_run_command_stores_or_prints_a_url_password(
    workdir: Path, orthanc_a: LocalOrthanc, orthanc_b: LocalOrthanc, client_a: Orthanc
) -> None:
    a = orthanc_a.url_with_credentials
    assert PASSWORD in a
    outputs = []

    def run(*args: str, expect: int = 0) -> None:
        result = run_cli(*args, cwd=workdir)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == expect, result.stdout + result.stderr

    run("populate", "--to", a, "--patients", "2", "--instances", "2")
    run("populate", "--out", "files", "--patients", "1", "--instances", "2", "--seed", "9")
    run("upload", "files", "--to", a)
    run("compare", a, orthanc_b.url, "--transfer-missing")  # they differ: it transfers (exit 0 when done)
    assert "transfer" in [run.operation for run in Ledger(f"sqlite:///{ledger_file(workdir)}").runs()]
    run("transfer", "--from", a, "--to", orthanc_b.url)
    run("download", "--from", a, "--out", "down")
    run("clone", "--from", a, "--to", orthanc_b.url)
    run("runs")
    run("run", "show", "last")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    forwarder = subprocess.Popen(
        [*PACSFLOW, "forward", "--from", a, "--to", orthanc_b.url, "--poll", "0.3"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: not client_a.ids("studies"), "the forwarder to empty the source", forwarder)
    except AssertionError:
        raise AssertionError(forwarder.communicate(timeout=30)[0]) from None
    forwarder.send_signal(signal.SIGTERM)
    outputs.append(forwarder.communicate(timeout=30)[0])
    assert forwarder.returncode == 130
    assert len(outputs) == 10
    for output in outputs:
        assert PASSWORD not in output
    assert PASSWORD.encode() not in ledger_bytes(workdir)
    assert USER.encode() not in ledger_bytes(workdir)  # the user name is not stored either


def test_resume_gets_the_credentials_again(workdir: Path, orthanc_a: LocalOrthanc, client_a: Orthanc) -> None:
    a = orthanc_a.url_with_credentials
    planned = run_cli(
        "populate", "--to", a, "--patients", "1", "--instances", "3", "--plan-only", cwd=workdir
    )
    assert planned.returncode == 0, planned.stderr
    without = run_cli("resume", "last", cwd=workdir)
    assert without.returncode == 2
    assert "needs a login and none was sent" in without.stderr and "--credentials" in without.stderr
    resumed = run_cli("resume", "last", "--credentials", a, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert PASSWORD not in resumed.stdout + resumed.stderr + without.stderr
    assert len(client_a.ids("instances")) == 3
    assert PASSWORD.encode() not in ledger_bytes(workdir)


def test_resume_finds_the_credentials_of_a_configured_server_with_that_url(
    workdir: Path, config_file: Path, orthanc_a: LocalOrthanc, client_a: Orthanc
) -> None:
    # the run names the server by URL; pacsflow.toml names a server with the same address and its password
    spelled = f"http://{USER}:{PASSWORD}@127.0.0.1:{orthanc_a.http_port}/"
    planned = run_cli("populate", "--to", spelled, "--instances", "2", "--plan-only", cwd=workdir)
    assert planned.returncode == 0, planned.stderr
    resumed = run_cli("resume", "last", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert len(client_a.ids("instances")) == 2
