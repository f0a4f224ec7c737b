"""Benchmark download: a raw reference downloader, orthanc-api-client's helper and `pacsflow download` (--out,
--zip, --per-patient-zip), one run, plus pacsflow's peak memory on a data set 4x smaller.

Usage: python bench/download.py [--patients 20 --series 2 --instances 50 --pixels 512 --workers 4]
                                [--no-memory-check]
The generated data set is loaded once into a fresh Orthanc 1.10 (Debian's); each variant is its own process,
downloads every instance of that server into a fresh output folder with the same worker count, and its result
is counted (files, or the entries of its ZIPs) against the server's instance count.

orthanc-tools' downloader (orthanc_tools.orthanc_downloader) does not apply: it downloads only the studies
that carry one of its --labels (labels need Orthanc 1.12+; without any it downloads nothing), one at a time.
Timed in its place: orthanc-api-client's `instances.download_instances(ids, folder)`, the library's
"instances to a folder" helper, which has no workers option (one thread, one GET after the other).
The memory check (on unless --no-memory-check; it adds a second, smaller upload and download) loads a data
set with a quarter of the patients into a fresh Orthanc and downloads it with `pacsflow download --zip`: the
peak memory of both sizes should be about the same ("flat": ratio below 1.25).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    LAST_CPU,
    PACSFLOW,
    WORK,
    Measure,
    folder_stats,
    fresh_orthanc,
    generated,
    run,
    stop_all,
    table,
)

REFERENCE = "reference (thread pool GET, no checks)"
API_CLIENT = "orthanc-api-client download_instances"
OUT, ZIP, PER_PATIENT = (
    "pacsflow download --out",
    "pacsflow download --zip",
    "pacsflow download --per-patient-zip",
)
SMALL = "pacsflow download --zip, 1/4 of the patients"

# orthanc-api-client: every instance into one folder as <id>.dcm, one after the other (its only mode)
LIBRARY = """
import sys
from orthanc_api_client import OrthancApiClient
client = OrthancApiClient(sys.argv[1])
client.instances.download_instances(client.instances.get_all_ids(), sys.argv[2])
"""

HERE = Path(__file__).resolve().parent
FOLDER = WORK / "download"


class Mismatch(RuntimeError):
    """A variant ran but its result does not hold every instance of the server."""


def statistics(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/statistics").json()


def fresh(name: str) -> Path:
    """An empty folder in the benchmark's work folder."""
    path = FOLDER / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def dcm_files(folder: Path) -> int:
    return folder_stats(folder)[0]


def zip_entries(*archives: Path) -> int:
    """The file entries of these ZIPs (zipfile reads each central directory; a missing ZIP fails)."""
    entries = 0
    for archive in archives:
        with zipfile.ZipFile(archive) as opened:
            entries += sum(1 for info in opened.infolist() if not info.is_dir())
    return entries


def pacsflow_download(url: str, ledger: Path, output: list[str], workers: int) -> list[str]:
    return [
        *PACSFLOW,
        "--ledger",
        f"sqlite:///{ledger}",
        "-q",
        "download",
        "--from",
        url,
        *output,
        "--workers",
        str(workers),
    ]


def load(data: Path, workers: int) -> tuple[str, int, float]:
    """A fresh Orthanc holding DATA (the reference uploader): its URL, instance count and megabytes."""
    total, megabytes = folder_stats(data)
    server = fresh_orthanc("download")  # the previous one of that name is stopped and wiped
    run([sys.executable, str(HERE / "reference_upload.py"), server.url, str(data), str(workers)])
    stored = statistics(server.url)["CountInstances"]
    if stored != total:
        raise Mismatch(f"the server holds {stored} instances after uploading {total} files")
    return server.url, total, megabytes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--memory-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also download a data set with a quarter of the patients and compare peak memory (default: on)",
    )
    args = parser.parse_args()
    workers = str(args.workers)

    data = generated(args.patients, args.series, args.instances, args.pixels)
    url, total, megabytes = load(data, args.workers)
    patients = statistics(url)["CountPatients"]
    print(
        f"data: {total} instances, {megabytes:.0f} MB ({megabytes / total * 1000:.0f} KB each), "
        f"{patients} patients, {args.workers} workers, Orthanc from Debian",
        flush=True,
    )
    print(
        "orthanc-tools' orthanc_downloader does not apply (only studies with one of its --labels, "
        "Orthanc 1.12+; none: nothing downloaded); timed instead: orthanc-api-client's "
        "instances.download_instances, one thread (no workers option)",
        flush=True,
    )
    measures: list[Measure] = []
    cpu: dict[str, float] = {}
    failures: list[str] = []

    def measure(
        name: str, command: list[str], counted: Callable[[], int], cleanup: Path, instances: int, size: float
    ) -> Measure | None:
        """Run COMMAND, count what it wrote (COUNTED) against INSTANCES, then remove CLEANUP."""
        try:
            seconds, rss = run(command)
            found = counted()
            if found != instances:
                raise Mismatch(
                    f"{found} files or ZIP entries written, the server holds {instances} instances"
                )
        except (RuntimeError, OSError, zipfile.BadZipFile) as error:
            failures.append(name)
            print(f"FAILED: {name}: {' '.join(command)}\n{error}", file=sys.stderr, flush=True)
            return None
        finally:
            shutil.rmtree(cleanup, ignore_errors=True)  # the space given back; the next variant starts cold
        cpu[name] = LAST_CPU[0]
        result = Measure(name, seconds, instances, size, rss)
        measures.append(result)
        print(f"{name}: {seconds:.1f} s, {result.per_second:.0f} instances/s, {rss:.0f} MB peak", flush=True)
        return result

    out = fresh("reference")
    command = [sys.executable, str(HERE / "reference_download.py"), url, str(out), workers]
    if measure(REFERENCE, command, lambda: dcm_files(out), out, total, megabytes) is None:
        return 1  # nothing to compare with

    library = fresh("orthanc-api-client")
    command = [sys.executable, "-c", LIBRARY, url, str(library)]
    measure(API_CLIENT, command, lambda: dcm_files(library), library, total, megabytes)

    tree = fresh("pacsflow-out")
    command = pacsflow_download(
        url, fresh("ledger-out") / "ledger.db", ["--out", str(tree / "export")], workers
    )
    measure(OUT, command, lambda: dcm_files(tree), tree, total, megabytes)

    single = fresh("pacsflow-zip")
    archive = single / "export.zip"
    command = pacsflow_download(url, fresh("ledger-zip") / "ledger.db", ["--zip", str(archive)], workers)
    big_zip = measure(ZIP, command, lambda: zip_entries(archive), single, total, megabytes)

    many = fresh("pacsflow-per-patient")
    command = pacsflow_download(
        url, fresh("ledger-per-patient") / "ledger.db", ["--per-patient-zip", str(many / "zips")], workers
    )

    def per_patient() -> int:
        archives = sorted((many / "zips").glob("*.zip"))
        if len(archives) != patients:
            raise Mismatch(f"{len(archives)} ZIPs for {patients} patients: {[p.name for p in archives][:5]}")
        return zip_entries(*archives)

    measure(PER_PATIENT, command, per_patient, many, total, megabytes)

    small_zip = None
    if args.memory_check:
        quarter = max(1, args.patients // 4)
        small_data = generated(quarter, args.series, args.instances, args.pixels)
        small_url, small_total, small_megabytes = load(small_data, args.workers)
        small = fresh("pacsflow-zip-small")
        archive_small = small / "export.zip"
        command = pacsflow_download(
            small_url, fresh("ledger-zip-small") / "ledger.db", ["--zip", str(archive_small)], workers
        )
        small_zip = measure(
            SMALL, command, lambda: zip_entries(archive_small), small, small_total, small_megabytes
        )
    stop_all()

    print(table(measures, REFERENCE))
    print(f"{'CPU seconds (user + system) of each variant':<44} {'CPU s':>8} {'CPU/s':>8}")
    for m in measures:
        print(f"{m.name:<44} {cpu[m.name]:8.1f} {cpu[m.name] / m.seconds:8.2f}")
    by_name = {m.name: m for m in measures}
    reference = by_name[REFERENCE]
    for name, target in ((OUT, 0.9), (ZIP, 0.8), (PER_PATIENT, None)):
        if name not in by_name:
            print(f"{name} / reference: no figure (the variant failed)")
            continue
        ratio = by_name[name].per_second / reference.per_second
        verdict = f" (target >= {target}): {'met' if ratio >= target else 'NOT met'}" if target else ""
        print(f"{name} / reference: {ratio:.2f}x{verdict}")
    if OUT in by_name and API_CLIENT in by_name:
        print(f"{OUT} / {API_CLIENT}: {by_name[OUT].per_second / by_name[API_CLIENT].per_second:.2f}x")
    if args.memory_check:
        if big_zip is None or small_zip is None:
            print("peak memory, pacsflow --zip: no figure (a --zip variant failed)")
        else:
            growth = big_zip.instances / small_zip.instances
            ratio = big_zip.peak_rss_mb / small_zip.peak_rss_mb
            verdict = "flat" if ratio < 1.25 else "NOT flat"
            print(
                f"peak memory, pacsflow --zip: {big_zip.peak_rss_mb:.0f} MB for {big_zip.instances} "
                f"instances / {small_zip.peak_rss_mb:.0f} MB for {small_zip.instances} "
                f"({growth:.0f}x the data): {ratio:.2f} (target about 1.0): {verdict}"
            )
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
