"""clone: everything, then --follow the source's change feed across a source restart and a clone restart."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, instance_bytes
from tests.conftest import PACSFLOW, run_cli, wait_for


def add(client: Orthanc, seed: int, count: int) -> None:
    shape = Shape(patients=1, series=1, instances=count, pixels=16, seed=seed)
    for i in range(count):
        client.upload(instance_bytes(shape, 0, 0, 0, i))


def test_clone_copies_everything(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    add(client_a, 60, 5)
    result = run_cli("clone", "--from", "a", "--to", "b", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert sorted(client_b.ids("instances")) == sorted(client_a.ids("instances"))


def test_follow_survives_a_source_restart_and_its_own_restart(
    workdir: Path, config_file: Path, orthanc_a: LocalOrthanc, client_a: Orthanc, client_b: Orthanc
) -> None:
    add(client_a, 61, 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    log = (workdir / "follower.log").open("a")

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*PACSFLOW, "clone", "--from", "a", "--to", "b", "--follow", "--poll", "0.2"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,  # a file, not a pipe: a long-running process must never block on it
            text=True,
        )

    def b_has(count: int) -> bool:
        return len(client_b.ids("instances")) == count

    follower = start()
    wait_for(lambda: b_has(3), "the initial copy", follower)
    add(client_a, 62, 4)  # arrives while following
    wait_for(lambda: b_has(7), "new instances followed", follower)

    orthanc_a.kill()  # the source crashes and comes back
    orthanc_a.start()
    with Orthanc(orthanc_a.server_config()) as source:
        add(source, 63, 2)
        wait_for(lambda: b_has(9), "instances after the source restart", follower)

        follower.send_signal(signal.SIGTERM)
        assert follower.wait(timeout=30) == 130, (workdir / "follower.log").read_text()

        add(source, 64, 3)  # arrive while nobody follows
        follower = start()
        wait_for(lambda: b_has(12), "instances that arrived while stopped", follower)
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=30)
        assert sorted(client_b.ids("instances")) == sorted(source.ids("instances"))
    runs = run_cli("runs", cwd=workdir).stdout
    assert runs.count("clone") == 1  # the second follower continued the same run
