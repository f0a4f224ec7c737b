"""forward: stable studies go to every destination and leave the source only when all of them hold them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, instance_bytes
from tests.conftest import PACSFLOW, wait_for


@pytest.fixture
def orthanc_c(tmp_path: Path) -> Iterator[LocalOrthanc]:
    server = LocalOrthanc("C", tmp_path / "orthanc-c", aet="ORTHANCC").start()
    yield server
    server.kill()


def add_study(client: Orthanc, seed: int, count: int = 3) -> str:
    shape = Shape(patients=1, series=1, instances=count, pixels=16, seed=seed)
    answers = [client.upload(instance_bytes(shape, 0, 0, 0, i)) for i in range(count)]
    return answers[0]["ParentStudy"]


def test_forward_to_two_destinations_deletes_only_when_both_hold_the_study(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc, orthanc_c: LocalOrthanc
) -> None:
    first = add_study(client_a, 70)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    log = (workdir / "forward.log").open("a")
    forwarder = subprocess.Popen(
        [
            *PACSFLOW,
            "--config",
            str(config_file),
            "forward",
            "--from",
            "a",
            "--to",
            "b",
            "--to",
            orthanc_c.url,
            "--poll",
            "0.3",
        ],
        cwd=workdir,
        env={**env, "PACSFLOW_RETRIES": "50"},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    c = Orthanc(orthanc_c.server_config())
    try:
        # a study that was waiting before the forwarder started: sent to both, then deleted
        wait_for(
            lambda: first not in client_a.ids("studies"), "the first study to leave the source", forwarder
        )
        assert first in client_b.ids("studies") and first in c.ids("studies")
        assert len(c.ids("instances")) == 3

        orthanc_c.kill()  # one destination goes down: the next study must stay on the source
        second = add_study(client_a, 71)
        wait_for(lambda: second in client_b.ids("studies"), "the second study on B", forwarder)
        time.sleep(4)
        assert second in client_a.ids("studies"), "deleted although C never got it"

        orthanc_c.start()  # back: the retry sends it, then it leaves the source
        wait_for(
            lambda: second not in client_a.ids("studies"), "the second study to leave the source", forwarder
        )
        assert second in c.ids("studies") and len(c.ids("instances")) == 6
    finally:
        forwarder.send_signal(signal.SIGTERM)
        code = forwarder.wait(timeout=30)
        c.close()
    assert code == 130, (workdir / "forward.log").read_text()
