"""Shared pieces of the benchmarks: generated data, fresh Orthancs, timed subprocesses, the result table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pacsflow.sandbox import LocalOrthanc

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "results"
PACSFLOW = [sys.executable, "-m", "pacsflow"]


def count(url: str) -> int:
    """How many instances the Orthanc at URL holds."""
    import httpx

    return int(httpx.get(f"{url}/statistics").json()["CountInstances"])


def pacsflow_upload(ledger: str, data: Path, url: str, workers: int, *extra: str) -> list[str]:
    """The `pacsflow upload` the benchmarks time: quiet, its own ledger, DATA into the Orthanc at URL."""
    return [
        *PACSFLOW,
        "--ledger",
        ledger,
        "-q",
        "upload",
        str(data),
        "--to",
        url,
        "--workers",
        str(workers),
        *extra,
    ]


@dataclass
class Measure:
    name: str
    seconds: float
    instances: int
    megabytes: float
    peak_rss_mb: float = 0.0

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0


def generated(patients: int, series: int, instances: int, pixels: int, seed: int = 1) -> Path:
    """A cached data set made by `pacsflow populate --out` (deterministic: reused across runs)."""
    folder = WORK / f"data-{patients}x{series}x{instances}-{pixels}px-{seed}"
    marker = folder.with_name(folder.name + ".complete")  # beside, not inside: importers would try to send it
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        run(
            [
                *PACSFLOW,
                "--ledger",
                f"sqlite:///{WORK / 'gen-ledger.db'}",
                "-q",
                "populate",
                "--out",
                str(folder),
                "--patients",
                str(patients),
                "--series",
                str(series),
                "--instances",
                str(instances),
                "--pixels",
                str(pixels),
                "--seed",
                str(seed),
            ]
        )
        marker.touch()
    return folder


_STARTED: dict[str, LocalOrthanc] = {}


def fresh_orthanc(name: str, **options: object) -> LocalOrthanc:
    """An empty Orthanc; the previous one of that name is killed and its data removed."""
    previous = _STARTED.pop(name, None)
    if previous is not None:
        previous.wipe(graceful=False)
    server = LocalOrthanc(name, WORK / f"orthanc-{name}", **options)
    server.wipe(graceful=False)
    _STARTED[name] = server.start()
    return server


def stop_all() -> None:
    for server in _STARTED.values():
        server.wipe(graceful=False)
    _STARTED.clear()


LAST_CPU = [0.0]  # CPU seconds (user + system) of the last command run


def run(
    command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Run a command; return (seconds, peak RSS in MB of that process). Fails loudly on a non-zero exit."""
    WORK.mkdir(parents=True, exist_ok=True)  # a fresh clone has no results folder yet
    log = WORK / "last-command.log"
    with open(log, "wb") as output:  # a file, not a pipe: a chatty tool must not block on a full pipe
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=output, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    out, err = "", log.read_text(errors="replace")
    code = process.returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... exited {code}:\n{out}\n{err[-2000:]}")
    LAST_CPU[0] = usage.ru_utime + usage.ru_stime
    return seconds, usage.ru_maxrss / 1024


def folder_stats(folder: Path) -> tuple[int, float]:
    files = [p for p in folder.rglob("*.dcm")]
    return len(files), sum(p.stat().st_size for p in files) / 1e6


def table(measures: list[Measure], reference: str) -> str:
    base = next(m for m in measures if m.name == reference)
    lines = [f"{'variant':<44} {'seconds':>8} {'inst/s':>8} {'MB/s':>7} {'vs ref':>7} {'peak MB':>8}"]
    for m in measures:
        ratio = m.per_second / base.per_second if base.per_second else 0
        rss = f"{m.peak_rss_mb:8.0f}" if m.peak_rss_mb else f"{'-':>8}"
        lines.append(
            f"{m.name:<44} {m.seconds:8.2f} {m.per_second:8.0f} {m.megabytes / m.seconds:7.0f} "
            f"{ratio:6.2f}x {rss}"
        )
    return "\n".join(lines)
