"""Benchmark upload: a raw reference uploader, orthanc-tools' folder importer and `pacsflow upload`, one run.

Usage: python bench/upload.py [--patients 10 --series 2 --instances 50 --pixels 512 --workers 4]
Each variant uploads the same generated files into a fresh Orthanc 1.10 (Debian's), same worker count.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
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
    pacsflow_upload,
    run,
    stop_all,
    table,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    data = generated(args.patients, args.series, args.instances, args.pixels)
    files = sorted(data.rglob("*.dcm"))
    total, megabytes = folder_stats(data)
    print(
        f"data: {total} instances, {megabytes:.0f} MB ({megabytes / total * 1000:.0f} KB each), "
        f"{args.workers} workers, Orthanc from Debian",
        flush=True,
    )
    measures: list[Measure] = []
    ledger = f"sqlite:///{WORK / 'bench-ledger.db'}"
    Path(WORK / "bench-ledger.db").unlink(missing_ok=True)

    server = fresh_orthanc("upload")
    reference = Path(__file__).resolve().parent / "reference_upload.py"
    seconds, rss = run([sys.executable, str(reference), server.url, str(data), str(args.workers)])
    assert count(server.url) == total
    measures.append(Measure("reference (thread pool POST, no checks)", seconds, total, megabytes, rss))

    server = fresh_orthanc("upload")
    seconds, rss = run(
        [
            sys.executable,
            "-m",
            "orthanc_tools.orthanc_folder_importer",
            f"--url={server.url}",
            f"--folder_path={data}",
            f"--worker_threads_count={args.workers}",
        ]
    )
    assert count(server.url) == total, count(server.url)
    measures.append(Measure("orthanc-tools orthanc_folder_importer", seconds, total, megabytes, rss))

    server = fresh_orthanc("upload")
    upload = pacsflow_upload(ledger, data, server.url, args.workers)
    seconds, rss = run(upload)
    assert count(server.url) == total
    measures.append(Measure("pacsflow upload", seconds, total, megabytes, rss))
    seconds, rss = run(upload)
    measures.append(Measure("pacsflow upload, again (all already there)", seconds, total, megabytes, rss))

    half = WORK / "half"  # memory must not grow with the data set: the same upload of half the files
    if not half.exists():
        half.mkdir()
        for number, path in enumerate(files[: total // 2]):
            (half / f"{number:05d}.dcm").hardlink_to(path)
    server = fresh_orthanc("upload")
    seconds, rss_half = run(pacsflow_upload(ledger, half, server.url, args.workers))
    measures.append(Measure("pacsflow upload, half the files", seconds, total // 2, megabytes / 2, rss_half))

    archive = WORK / f"{data.name}.zip"
    if not archive.exists():
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
            for path in files:
                out.write(path, path.relative_to(data))
    server = fresh_orthanc("upload")
    seconds, rss = run(
        [
            *PACSFLOW,
            "--ledger",
            ledger,
            "-q",
            "upload",
            str(archive),
            "--to",
            server.url,
            "--workers",
            str(args.workers),
        ]
    )
    assert count(server.url) == total
    measures.append(Measure("pacsflow upload of one ZIP (deflated)", seconds, total, megabytes, rss))
    stop_all()

    print(table(measures, "reference (thread pool POST, no checks)"))
    by_name = {m.name: m for m in measures}
    ours, ref = by_name["pacsflow upload"], by_name["reference (thread pool POST, no checks)"]
    importer = by_name["orthanc-tools orthanc_folder_importer"]
    again = by_name["pacsflow upload, again (all already there)"]
    print(f"pacsflow / reference: {ours.per_second / ref.per_second:.2f}x (target >= 0.9)")
    print(f"pacsflow / folder importer: {ours.per_second / importer.per_second:.2f}x (target > 1)")
    print(f"first run / rerun time: {ours.seconds / again.seconds:.1f}x (target >= 10)")
    print(f"peak memory, all files / half the files: {ours.peak_rss_mb:.0f} MB / {rss_half:.0f} MB")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
