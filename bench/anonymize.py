"""Benchmark de-identification: a raw pydicom reference, dicognito, `pacsflow anonymize` and upload, one run.

Usage: python bench/anonymize.py [--patients 10 --series 2 --instances 50 --pixels 512 --workers 4 --rounds 3]
The same generated files, each variant its own process: into a fresh folder (reference, dicognito, pacsflow
with 1 and 2 workers) or into a fresh Orthanc 1.10 (`pacsflow upload` with and without --anonymize). Every
variant runs once per round, the rounds one after the other, and each figure is the variant's median: on
these shared 2-core machines one variant's time varies by a third from one minute to the next.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    LAST_CPU,
    PACSFLOW,
    WORK,
    Measure,
    count,
    folder_stats,
    fresh_orthanc,
    generated,
    pacsflow_upload,
    run,
    stop_all,
    table,
)

#: a fixed test secret (32 characters): pacsflow's pseudonyms and UIDs are keyed by it
SECRET = {"PACSFLOW_ANONYMIZE__SECRET": "pacsflow-bench-secret-0123456789"}
SEED = "20251"  # dicognito's --seed: the same values on every run

# dicognito has no parallel option: N processes, each on its share of the files, one output folder
SPLIT = """
import subprocess, sys
from pathlib import Path
n, command, folder = int(sys.argv[1]), sys.argv[2:-1], Path(sys.argv[-1])
files = sorted(str(p) for p in folder.rglob("*.dcm"))
share = -(-len(files) // n)
parts = [subprocess.Popen([*command, *files[i * share:(i + 1) * share]]) for i in range(n)]
sys.exit(max(part.wait() for part in parts))
"""

REFERENCE = "reference (pydicom: blank names, new UIDs)"
DICOGNITO = "dicognito"
ONE, TWO = "pacsflow anonymize, 1 worker", "pacsflow anonymize, 2 workers"
UPLOAD, UPLOAD_ANON = "pacsflow upload", "pacsflow upload --anonymize"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fresh(name: str) -> Path:
    """An empty output folder (or ledger file's folder) in the results work folder."""
    path = WORK / "anonymize" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--workers", type=int, default=4, help="for the two uploads")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every variant; figures are medians")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent

    data = generated(args.patients, args.series, args.instances, args.pixels)
    total, megabytes = folder_stats(data)
    print(
        f"data: {total} instances, {megabytes:.0f} MB ({megabytes / total * 1000:.0f} KB each), "
        f"uploads with {args.workers} workers into Orthanc from Debian",
        flush=True,
    )
    seconds: dict[str, list[float]] = defaultdict(list)
    peaks: dict[str, list[float]] = defaultdict(list)
    cpus: dict[str, list[float]] = defaultdict(list)
    orthanc_cpus: dict[str, list[float]] = defaultdict(list)  # the uploads: the local Orthanc's share

    def measure(name: str, command: list[str], out: Path | None = None, **kwargs: object) -> None:
        took, rss = run(command, **kwargs)  # type: ignore[arg-type]
        seconds[name].append(took)
        peaks[name].append(rss)
        cpus[name].append(LAST_CPU[0])
        if out is not None:  # every file written, then the space given back
            written, _ = folder_stats(out)
            assert written == total, (name, written, total)
            shutil.rmtree(out)

    reference = str(here / "reference_anonymize.py")
    dicognito = [sys.executable, "-m", "dicognito", "--quiet", "--seed", SEED, "--output-directory"]
    for number in range(1, args.rounds + 1):
        print(f"round {number} of {args.rounds}", flush=True)
        out = fresh("reference")
        measure(REFERENCE, [sys.executable, reference, str(data), str(out), "1"], out)
        out = fresh("reference-2")
        measure("reference, 2 processes", [sys.executable, reference, str(data), str(out), "2"], out)
        out = fresh("dicognito")
        measure(DICOGNITO, [*dicognito, str(out), str(data)], out)
        out = fresh("dicognito-2")
        measure(
            "dicognito, 2 processes (half the files each)",
            [sys.executable, "-c", SPLIT, "2", *dicognito, str(out), str(data)],
            out,
        )
        for name, workers in ((ONE, 1), (TWO, 2)):
            out, ledger = fresh(f"pacsflow-{workers}"), fresh(f"ledger-{workers}") / "ledger.db"
            command = [
                *PACSFLOW,
                "--ledger",
                f"sqlite:///{ledger}",
                "-q",
                "anonymize",
                str(data),
                "--out",
                str(out),
                "--workers",
                str(workers),
            ]
            measure(name, command, out, env=SECRET)
        for name, extra in ((UPLOAD, []), (UPLOAD_ANON, ["--anonymize"])):
            server = fresh_orthanc("anonymize")
            ledger = fresh(f"ledger-{'anon' if extra else 'plain'}") / "ledger.db"
            command = pacsflow_upload(f"sqlite:///{ledger}", data, server.url, args.workers, *extra)
            assert server.process is not None
            before = cpu_seconds(server.process.pid)
            measure(name, command, env=SECRET)
            orthanc_cpus[name].append(cpu_seconds(server.process.pid) - before)
            assert count(server.url) == total, (name, count(server.url))
    stop_all()

    measures = [
        Measure(name, statistics.median(times), total, megabytes, max(peaks[name]))
        for name, times in seconds.items()
    ]
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    orthanc_cpu = {name: statistics.median(values) for name, values in orthanc_cpus.items()}
    print(table(measures, REFERENCE))
    print(f"medians of {args.rounds} rounds; seconds of each round:")
    for name, times in seconds.items():
        print(f"  {name:<44} {' '.join(f'{one:6.2f}' for one in times)}")
    print(f"CPU time on {os.cpu_count()} cores (for 2 processes, peak MB above is the larger one's):")
    print(f"{'variant':<44} {'CPU s':>8} {'CPU/s':>8} {'Orthanc CPU s':>14}")
    for m in measures:
        server_cpu = f"{orthanc_cpu[m.name]:14.1f}" if m.name in orthanc_cpu else f"{'-':>14}"
        print(f"{m.name:<44} {cpu[m.name]:8.1f} {cpu[m.name] / m.seconds:8.2f} {server_cpu}")
    by_name = {m.name: m for m in measures}

    def ratio(ours: str, theirs: str) -> float:
        return by_name[ours].per_second / by_name[theirs].per_second

    one, two, upload = ratio(ONE, DICOGNITO), ratio(TWO, DICOGNITO), ratio(UPLOAD_ANON, UPLOAD)
    for label, value, target, met in (
        ("pacsflow 1 worker / dicognito", one, ">= 1", one >= 1),
        ("pacsflow 2 workers / dicognito", two, "> 1", two > 1),
        ("upload --anonymize / upload", upload, ">= 0.8", upload >= 0.8),
    ):
        print(f"{label}: {value:.2f}x (target {target}): {'met' if met else 'NOT met'}")
    print(f"pacsflow 2 workers / 1 worker: {ratio(TWO, ONE):.2f}x")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
