"""A large local run de-identifies in worker processes: the same files, the same failures, the same mapping
as one process makes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pacsflow.ops.processes import MIN_ITEMS
from pacsflow.synthetic import Shape, instance_bytes, instance_path
from tests.conftest import cli
from tests.phi_corpus import write_corpus

SECRET = "test-secret-0123456789abcdef-processes"
SHAPE = Shape(patients=3, studies=1, series=2, instances=MIN_ITEMS // 6 + 1, pixels=16, seed=5)

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="worker processes need two cores")


@pytest.fixture
def inputs(workdir: Path) -> Path:
    """The PHI corpus (burned-in files too) and enough synthetic instances to start worker processes,
    with a file that is not DICOM and one cut short."""
    (workdir / "pacsflow.toml").write_text(f'[anonymize]\nsecret = "{SECRET}"\n')
    root = workdir / "in"
    write_corpus(root / "corpus")
    for p in range(SHAPE.patients):
        for se in range(SHAPE.series):
            for i in range(SHAPE.instances):
                path = instance_path(root / "synthetic", SHAPE, p, 0, se, i)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(instance_bytes(SHAPE, p, 0, se, i))
    (root / "notes.txt").write_text("not an image")
    whole = instance_bytes(SHAPE, 0, 0, 0, 0)
    (root / "cut.dcm").write_bytes(whole[: len(whole) - 100])
    return root


def tree(folder: Path) -> dict[Path, bytes]:
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*.dcm")}


def failures(workdir: Path) -> list[str]:
    shown = cli("run", "show", "last", "--failed", cwd=workdir).stdout
    return sorted(line.split(": ", 1)[1] for line in shown.splitlines() if line.startswith("  file #"))


def test_worker_processes_write_what_one_process_writes(
    workdir: Path, inputs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="pacsflow"):
        many = cli("anonymize", "in", "--out", "many", "--workers", "4", cwd=workdir)
    assert many.returncode == 1, many.stdout + many.stderr  # the burned-in files and the cut one
    assert f"de-identifying in {min(4, os.cpu_count() or 1)} worker processes" in caplog.text
    many_failures = failures(workdir)
    one = cli("anonymize", "in", "--out", "one", "--workers", "1", cwd=workdir)
    assert one.returncode == 1, one.stdout + one.stderr
    assert tree(workdir / "many") == tree(workdir / "one")
    assert len(tree(workdir / "many")) == 16 + SHAPE.patients * SHAPE.series * SHAPE.instances
    assert many_failures == failures(workdir)
    assert any("burned-in" in line for line in many_failures)
    assert any("truncated" in line for line in many_failures)
    assert "not DICOM 1" in many.stdout and "not DICOM 1" in one.stdout
