"""`make bench` has something to run: bench/run_all.py finds every benchmark script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_run_all_lists_every_benchmark() -> None:
    listed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    # one command line per benchmark: the Python, then the script
    names = {Path(line.split()[1]).name for line in listed.stdout.splitlines() if line.strip()}
    assert {"upload.py", "transfer.py"} <= names
    assert "common.py" not in names and "run_all.py" not in names
    makefile = (ROOT / "Makefile").read_text()
    assert "bench/run_all.py" in makefile
