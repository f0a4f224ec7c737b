"""transfer under faults: a destination that refuses some instances, restarts, a kill -9, bad passwords."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsflow.ledger import DONE, Ledger
from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from tests.conftest import PACSFLOW, USER, cli, latest_run, run_cli, start_cli, wait_for

REFUSE_SECOND = """
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.InstanceNumber ~= '2'
end
"""


@pytest.fixture
def picky(tmp_path: Path) -> Iterator[LocalOrthanc]:
    """An Orthanc whose Lua filter refuses every instance number 2."""
    script = tmp_path / "filter.lua"
    script.write_text(REFUSE_SECOND)
    server = LocalOrthanc("F", tmp_path / "orthanc-f", extra={"LuaScripts": [str(script)]}).start()
    yield server
    server.kill()


def test_refused_instances_are_recorded_and_the_rest_goes_on(
    workdir: Path, config_file: Path, client_a: Orthanc, picky: LocalOrthanc
) -> None:
    cli("populate", "--to", "a", "--patients", "2", "--instances", "3", cwd=workdir)
    result = run_cli("transfer", "--from", "a", "--to", picky.url, cwd=workdir)
    assert result.returncode == 1
    assert "instances copied 4, failed 2" in result.stdout
    shown = run_cli("run", "show", "last", "--failed", cwd=workdir).stdout
    assert shown.count("refused by the server (FilteredOut)") == 2
    assert shown.count("destination has 2 of 3 instances") == 2  # both studies fail their check
    with Orthanc(picky.server_config()) as destination:
        assert len(destination.ids("instances")) == 4


def test_kill_9_mid_transfer_then_resume_ends_identical(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    cli("populate", "--to", "a", "--patients", "6", "--series", "2", "--instances", "40", cwd=workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    process = subprocess.Popen(
        [*PACSFLOW, "transfer", "--from", "a", "--to", "b", "--workers", "2"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: len(client_b.ids("instances")) >= 100, "a part copied", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(client_b.ids("instances")) < 480
    resumed = run_cli("resume", "last", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(client_b.ids("instances")) == sorted(client_a.ids("instances"))
    run = latest_run(workdir)
    items = Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}").items(run.id, kind="instance")
    redone = [item for item in items if item.attempts > 1]
    assert len(redone) <= 4 * 2  # only what the killed process held
    # every item done; only a redone one may be skipped instead (stored just before the kill, found there)
    assert {item.status for item in items if item.attempts == 1} == {DONE}
    assert {item.status for item in redone} <= {DONE, "skipped"}


def _transfer_through_an_outage(
    workdir: Path, client_a: Orthanc, orthanc_b: LocalOrthanc, down_for: float
) -> str:
    """Transfer A -> B with default settings while B goes down for DOWN_FOR seconds; the run's log."""
    cli("populate", "--to", "a", "--patients", "6", "--series", "2", "--instances", "40", cwd=workdir)
    process = start_cli(
        "transfer", "--from", "a", "--to", "b", "--workers", "2", cwd=workdir, log="transfer.log"
    )
    with Orthanc(orthanc_b.server_config()) as destination:
        wait_for(lambda: len(destination.ids("instances")) >= 100, "a part copied", process)
    orthanc_b.kill()
    time.sleep(down_for)
    assert process.poll() is None, "the run ended while its destination was down"
    orthanc_b.start()
    code = process.wait(timeout=120)
    output = (workdir / "transfer.log").read_text()
    assert code == 0, output[-2000:]
    with Orthanc(orthanc_b.server_config()) as destination:
        assert sorted(destination.ids("instances")) == sorted(client_a.ids("instances"))
    return output


def test_destination_restarting_mid_transfer_loses_nothing(
    workdir: Path, config_file: Path, client_a: Orthanc, orthanc_b: LocalOrthanc
) -> None:
    output = _transfer_through_an_outage(workdir, client_a, orthanc_b, down_for=3)
    assert "waiting for b (down since" in output


@pytest.mark.timeout(400)
def test_destination_down_for_90_seconds_the_run_waits_and_finishes(
    workdir: Path, config_file: Path, client_a: Orthanc, orthanc_b: LocalOrthanc
) -> None:
    # far longer than the default retry budget (5 attempts, 1+2+4+8 s): only waiting can get through
    output = _transfer_through_an_outage(workdir, client_a, orthanc_b, down_for=90)
    assert "waiting for b (down since" in output and "b answers again after" in output
    closing = re.search(r"^run \S+: (\w+); (.*)$", output, re.MULTILINE)
    assert closing is not None and closing[1] == "done" and "failed" not in closing[2]


def test_wrong_password_on_the_source(
    workdir: Path, orthanc_a: LocalOrthanc, orthanc_b: LocalOrthanc
) -> None:
    wrong = f"http://{USER}:bad@127.0.0.1:{orthanc_a.http_port}"
    result = run_cli("transfer", "--from", wrong, "--to", orthanc_b.url, cwd=workdir)
    assert (
        result.returncode == 2
        and "refused user 'alice' with the password given" in result.stderr
        and "bad" not in result.stderr
    )


FORBID_FILES = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return not string.find(uri, '/file')
end
"""


def test_a_forbidden_request_names_its_route_not_the_instance(
    workdir: Path, config_file: Path, client_a: Orthanc, tmp_path: Path
) -> None:
    """Orthanc IDs are hashes of patient IDs and UIDs: without --log-phi no line shows one."""
    script = tmp_path / "forbid.lua"
    script.write_text(FORBID_FILES)
    guarded = LocalOrthanc("G", tmp_path / "orthanc-g", extra={"LuaScripts": [str(script)]}).start()
    try:
        with Orthanc(guarded.server_config()) as source:
            cli("populate", "--to", guarded.url, "--instances", "2", cwd=workdir)
            instances = source.ids("instances")
        result = run_cli("transfer", "--from", guarded.url, "--to", "b", cwd=workdir)
        shown = run_cli("--log-phi", "transfer", "--from", guarded.url, "--to", "b", cwd=workdir)
    finally:
        guarded.kill()
    assert result.returncode == 2
    assert "not allowed to GET /instances/{id}/file (HTTP 403)" in result.stderr
    assert not any(instance in result.stdout + result.stderr for instance in instances)
    assert any(instance in shown.stderr for instance in instances)  # --log-phi shows which
