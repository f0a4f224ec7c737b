"""Fixtures: real Orthanc processes on free loopback ports (session-wide, emptied per test), CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pacsflow.config import Settings
from pacsflow.ledger import Ledger
from pacsflow.orthanc import Orthanc
from pacsflow.pgsandbox import LocalPostgres
from pacsflow.sandbox import LocalOrthanc

PACSFLOW = [sys.executable, "-m", "pacsflow"]
USER, PASSWORD = "alice", "s3cret-Pw"


def _empty(server: LocalOrthanc) -> None:
    with Orthanc(server.server_config()) as client:
        for patient in client.ids("patients"):
            client.delete_resource("patients", patient)


@pytest.fixture(scope="session")
def _orthanc_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    server = LocalOrthanc(
        "A", tmp_path_factory.mktemp("orthanc-a"), aet="ORTHANCA", user=USER, password=PASSWORD
    )
    server.start()
    yield server
    server.kill()  # throwaway data: no need for Orthanc's 3-second graceful stop


@pytest.fixture(scope="session")
def _orthanc_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    server = LocalOrthanc("B", tmp_path_factory.mktemp("orthanc-b"), aet="ORTHANCB")
    server.start()
    yield server
    server.kill()  # throwaway data: no need for Orthanc's 3-second graceful stop


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (Debian's postgresql package) for the shared ledger."""
    server = LocalPostgres().start()
    yield server.url
    server.stop()


@pytest.fixture
def orthanc_a(_orthanc_a: LocalOrthanc) -> LocalOrthanc:
    """An empty Orthanc 1.10 with HTTP authentication (alice / s3cret-Pw)."""
    if _orthanc_a.process is None or _orthanc_a.process.poll() is not None:
        _orthanc_a.start()
    _empty(_orthanc_a)
    return _orthanc_a


@pytest.fixture
def orthanc_b(_orthanc_b: LocalOrthanc) -> LocalOrthanc:
    """An empty Orthanc 1.10 without authentication."""
    if _orthanc_b.process is None or _orthanc_b.process.poll() is not None:
        _orthanc_b.start()
    _empty(_orthanc_b)
    return _orthanc_b


@pytest.fixture
def client_a(orthanc_a: LocalOrthanc) -> Iterator[Orthanc]:
    with Orthanc(orthanc_a.server_config()) as client:
        yield client


@pytest.fixture
def client_b(orthanc_b: LocalOrthanc) -> Iterator[Orthanc]:
    with Orthanc(orthanc_b.server_config()) as client:
        yield client


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private working folder holding the config file, so that the default ledger lands here too
    (.pacsflow/ledger.db); without a config file it goes to the user's data directory, made private as
    well ($XDG_DATA_HOME under this folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    for key in list(os.environ):
        if key.startswith("PACSFLOW_"):
            monkeypatch.delenv(key)
    return tmp_path


@pytest.fixture
def config_file(workdir: Path, orthanc_a: LocalOrthanc, orthanc_b: LocalOrthanc) -> Path:
    """pacsflow.toml naming both servers and Orthanc A's DICOM port as a modality."""
    path = workdir / "pacsflow.toml"
    path.write_text(
        f"""
workers = 4

[servers.a]
url = "{orthanc_a.url}"
user = "{USER}"
password = "{PASSWORD}"
timeout = 30

[servers.b]
url = "{orthanc_b.url}"

[modalities.orthanc-a]
aet = "{orthanc_a.aet}"
host = "127.0.0.1"
port = {orthanc_a.dicom_port}
"""
    )
    return path


@pytest.fixture
def settings(workdir: Path, orthanc_a: LocalOrthanc, orthanc_b: LocalOrthanc) -> Settings:
    return Settings(
        ledger=f"sqlite:///{workdir / 'ledger.db'}",
        workers=4,
        retries=3,
        servers={"a": orthanc_a.server_config(), "b": orthanc_b.server_config()},
    )


def wait_for(condition: Callable[[], object], what: str, process: subprocess.Popen | None = None) -> None:
    """Poll CONDITION (60 s at most); fail if PROCESS ends first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ledger_path(workdir: Path) -> Path:
    """The default SQLite ledger of commands run in WORKDIR: beside a config file there, else in the
    user's data folder (the workdir fixture's $XDG_DATA_HOME)."""
    beside_config = workdir / ".pacsflow" / "ledger.db"
    if beside_config.exists() or (workdir / "pacsflow.toml").exists():
        return beside_config
    return workdir / "xdg-data" / "pacsflow" / "ledger.db"


def latest_run(workdir: Path, kind: str | None = None, status: str | None = None) -> Any:
    """The newest run of the default ledger under WORKDIR, or (with KIND/STATUS) its matching items."""
    path = ledger_path(workdir)
    if not path.exists():
        return None
    ledger = Ledger(f"sqlite:///{path}")
    runs = ledger.runs(1)
    if not runs or kind is None:
        return runs[0] if runs else None
    return ledger.items(runs[0].id, status=status, kind=kind)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120):
    """Run the real `pacsflow` in a subprocess; returns the CompletedProcess (text)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    full_env.update(env or {})
    return subprocess.run(
        [*PACSFLOW, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def start_cli(*args: str, cwd: Path, log: str) -> subprocess.Popen[bytes]:
    """The real `pacsflow ARGS` in the background on the default settings, its output in CWD/LOG."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    return subprocess.Popen(
        [*PACSFLOW, *args], cwd=cwd, env=env, stdout=(cwd / log).open("a"), stderr=subprocess.STDOUT
    )


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The `pacsflow` command line run in this process (no interpreter start, no imports again), for
    usage, error-message and short commands; like run_cli, a CompletedProcess with stdout and stderr.
    Log lines go to pytest's log capture here, not to stderr: tests of log lines use run_cli."""
    from typer.testing import CliRunner

    from pacsflow.cli import app

    previous = Path.cwd()
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("PACSFLOW_")}
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    finally:
        os.chdir(previous)
        os.environ.update(saved)
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)
