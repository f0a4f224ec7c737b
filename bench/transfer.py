"""Benchmark transfer: a raw reference copier, orthanc-tools' OrthancCloner and `pacsflow transfer`, one run.

Usage: python bench/transfer.py [--patients 20 --series 2 --instances 50 --pixels 512 --workers 4]
The source Orthanc is loaded once; each variant copies it into a fresh destination Orthanc 1.10.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    PACSFLOW,
    WORK,
    Measure,
    count,
    folder_stats,
    fresh_orthanc,
    generated,
    run,
    stop_all,
    table,
)

CLONER = """
import sys
from orthanc_api_client import OrthancApiClient
from orthanc_tools import OrthancCloner
cloner = OrthancCloner(source=OrthancApiClient(sys.argv[1]), destination=OrthancApiClient(sys.argv[2]),
                       worker_threads_count=int(sys.argv[3]))
cloner.execute(existing_changes_only=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent

    data = generated(args.patients, args.series, args.instances, args.pixels)
    total, megabytes = folder_stats(data)
    source = fresh_orthanc("source")
    run([sys.executable, str(here / "reference_upload.py"), source.url, str(data), str(args.workers)])
    assert count(source.url) == total
    print(
        f"data: {total} instances, {megabytes:.0f} MB ({megabytes / total * 1000:.0f} KB each), "
        f"{args.workers} workers, two Orthancs from Debian",
        flush=True,
    )
    measures: list[Measure] = []
    ledger = f"sqlite:///{WORK / 'bench-transfer-ledger.db'}"
    Path(WORK / "bench-transfer-ledger.db").unlink(missing_ok=True)

    target = fresh_orthanc("target")
    seconds, rss = run(
        [sys.executable, str(here / "reference_transfer.py"), source.url, target.url, str(args.workers)]
    )
    assert count(target.url) == total
    measures.append(Measure("reference (GET file + POST, no checks)", seconds, total, megabytes, rss))

    target = fresh_orthanc("target")
    seconds, rss = run([sys.executable, "-c", CLONER, source.url, target.url, str(args.workers)])
    assert count(target.url) == total, count(target.url)
    measures.append(Measure("orthanc-tools OrthancCloner (existing only)", seconds, total, megabytes, rss))

    target = fresh_orthanc("target")
    transfer = [
        *PACSFLOW,
        "--ledger",
        ledger,
        "-q",
        "transfer",
        "--from",
        source.url,
        "--to",
        target.url,
        "--workers",
        str(args.workers),
    ]
    seconds, rss = run(transfer)
    assert count(target.url) == total
    measures.append(Measure("pacsflow transfer", seconds, total, megabytes, rss))
    seconds, rss = run(transfer)
    measures.append(Measure("pacsflow transfer, again (nothing missing)", seconds, total, megabytes, rss))
    stop_all()

    print(table(measures, "reference (GET file + POST, no checks)"))
    by_name = {m.name: m for m in measures}
    ours, ref = by_name["pacsflow transfer"], by_name["reference (GET file + POST, no checks)"]
    cloner, again = (
        by_name["orthanc-tools OrthancCloner (existing only)"],
        by_name["pacsflow transfer, again (nothing missing)"],
    )
    print(f"pacsflow / reference: {ours.per_second / ref.per_second:.2f}x (target >= 0.85)")
    print(f"pacsflow / OrthancCloner: {ours.per_second / cloner.per_second:.2f}x (target >= 5)")
    print(f"rerun time / first run time: {again.seconds / ours.seconds:.2f} (target < 0.1)")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
