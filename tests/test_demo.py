"""`pacsflow demo` (what `make demo` runs) works end to end on its own throwaway servers."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli


def test_demo_runs_end_to_end(workdir: Path) -> None:
    result = run_cli("demo", cwd=workdir, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("populate", "upload", "transfer", "download", "retrieve"):
        assert f"{step:<9} done" in out
    for way in ("REST", "DICOM"):
        assert f"160 of 160 generated instances came back through a and b by {way} - identical" in out
    assert not (workdir / ".pacsflow" / "demo" / "orthanc-a").exists()  # servers cleaned up
