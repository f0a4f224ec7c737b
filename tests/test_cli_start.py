"""The command line starts at once: importing it loads nothing heavy, and --help and --version are fast."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

HEAVY = ("sqlalchemy", "pydantic", "httpx", "pydicom", "pynetdicom")


def test_importing_the_cli_loads_no_heavy_library() -> None:
    code = f"import sys, pacsflow.cli; print(' '.join(name for name in {HEAVY!r} if name in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


def _median_start(*args: str, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_help_and_version_start_within_twice_an_httpx_import() -> None:
    # measured side by side, medians: the goal is at most 2x what a script importing httpx needs
    baseline = _median_start("-c", "import httpx")
    for flag in ("--help", "--version"):
        assert _median_start("-m", "pacsflow", flag) <= 2 * baseline
