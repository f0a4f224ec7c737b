"""Benchmark retrieve: a raw pynetdicom C-GET reference, DCMTK getscu and movescu, and `pacsflow retrieve`
(--method get and --method move), one run, from one local Orthanc 1.10 acting as the PACS.

Usage: python bench/retrieve.py [--patients 20 --series 2 --instances 50 --pixels 512 --workers 4]
The generated data set is loaded once into a fresh Orthanc (Debian's) that knows, as C-MOVE destinations,
PACSFLOW (pacsflow's storage SCP) and one MOVESCU<i> per movescu lane, each on its own port. Each variant
is its own process (DCMTK: one launcher of N lanes), retrieves every series of that server into a fresh
folder with the same parallelism N (--workers), and its files are counted against the server's instance
count: a variant that misses any is reported as failed, not timed.

- reference: bench/reference_retrieve.py, N threads, one association each, a C-GET per series from a
  shared queue, every instance's bytes written as received, no checks (the raw Python ceiling);
- getscu / movescu: N lanes at once, each running one DCMTK call per series of its share (every N-th
  series), one after the other, each into its own output folder; each movescu lane receives on its own
  --port. Not one call per share with every query file: getscu 3.6.7 crashes (SIGSEGV) after the last of
  several query files (it loads "the next file" past the end of its list), and one folder per series
  keeps lanes apart (generated data sets repeated a few SOPInstanceUIDs across series until synthetic.py
  separated its UID sources; one flat -od folder would have overwritten them);
- the same two with TCP_NODELAY=1 in their environment: DCMTK since 3.6.2 leaves Nagle's algorithm on
  unless built otherwise, and Debian's is, so each instance then waits for the peer's delayed ACK (about
  50 ms an instance here: the "20 instances/s per association" measured for issue #12); TCP_NODELAY=1 is
  DCMTK's own run-time switch to turn it off. The Orthanc keeps its environment (a PACS is as it is),
  though Debian's links the same DCMTK;
- pacsflow retrieve --method get / --method move, --workers N, into a folder.
The reference and DCMTK are handed the series list (taken from the server's REST API before the clock
starts); pacsflow finds it itself with C-FINDs (the studies, then each study's series) inside its timed
run, and records every item in its ledger. Issue #12's target: pacsflow at 0.9x or better of DCMTK's
instances/s (getscu for get, movescu for move) at equal parallelism, against both DCMTK settings: as
shipped (what the issue measured) and with TCP_NODELAY=1 (DCMTK at its best).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from pydicom.dataset import Dataset

from pacsflow.sandbox import free_port

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

REFERENCE = "reference (pynetdicom C-GET, no checks)"
GETSCU, GETSCU_NODELAY = "DCMTK getscu", "DCMTK getscu, TCP_NODELAY=1"
MOVESCU, MOVESCU_NODELAY = "DCMTK movescu", "DCMTK movescu, TCP_NODELAY=1"
GET, MOVE = "pacsflow retrieve --method get", "pacsflow retrieve --method move"
OUR_AET, SERVER_AET = "PACSFLOW", "ORTHANC"
#: issue #12's targets: pacsflow's instances/s over DCMTK's, same method, same parallelism
TARGETS = ((GET, GETSCU), (GET, GETSCU_NODELAY), (MOVE, MOVESCU), (MOVE, MOVESCU_NODELAY))
NODELAY = {"TCP_NODELAY": "1"}  # read by DCMTK's network layer (dcmnet/libsrc/dul.cc, dulfsm.cc)

# N lanes at once, given as one JSON list of lists of commands; each lane runs its commands one after the
# other and stops at its first failure; exits 1 if any failed. Run by common.run, whose wait4 of this
# launcher also counts the CPU of every command it waited for (and the peak memory of the largest)
LANES = """
import json, subprocess, sys, threading
failed = []
def lane(commands):
    for command in commands:
        code = subprocess.run(command).returncode
        if code != 0:
            failed.append(f"{command[0]} exited {code}")
            return
threads = [threading.Thread(target=lane, args=(one,)) for one in json.loads(sys.argv[1])]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
sys.exit("; ".join(failed) or None)
"""

HERE = Path(__file__).resolve().parent
FOLDER = WORK / "retrieve"


class Mismatch(RuntimeError):
    """A variant ran but did not write every instance of the server."""


def fresh(name: str) -> Path:
    """An empty folder in the benchmark's work folder."""
    path = FOLDER / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def files_in(folder: Path) -> int:
    """Every file under FOLDER: DCMTK names its files <modality>.<SOPInstanceUID>, without .dcm."""
    return sum(1 for path in folder.rglob("*") if path.is_file())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def series_list(url: str) -> list[tuple[str, str]]:
    """(StudyInstanceUID, SeriesInstanceUID) of every series on the server, patient by patient."""
    studies = {
        one["ID"]: one["MainDicomTags"]["StudyInstanceUID"]
        for one in httpx.get(f"{url}/studies", params={"expand": ""}, timeout=60).json()
    }
    found = [
        (studies[one["ParentStudy"]], one["MainDicomTags"]["SeriesInstanceUID"])
        for one in httpx.get(f"{url}/series", params={"expand": ""}, timeout=60).json()
    ]
    return sorted(found)


def query_files(series: list[tuple[str, str]], folder: Path) -> list[Path]:
    """One DCMTK query file (a bare data set) per series: QueryRetrieveLevel and the two UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, (study, uid) in enumerate(series):
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID, query.SeriesInstanceUID = study, uid
        path = folder / f"q{number:05d}.dcm"
        query.save_as(path, implicit_vr=True, little_endian=True)
        paths.append(path)
    return paths


def lanes(
    queries: list[Path], count: int, out: Path, command: Callable[[int, Path, Path], list[str]]
) -> list[str]:
    """The launcher of COUNT lanes (fewer when there are fewer series): lane i runs COMMAND(i, query file,
    output folder) for every COUNT-th query file, each series into its own folder under OUT (made now,
    before the clock starts: DCMTK writes only into an existing folder)."""
    work = []
    for lane in range(min(count, len(queries))):
        calls = []
        for query in queries[lane::count]:
            folder = out / query.stem
            folder.mkdir(parents=True, exist_ok=True)
            calls.append(command(lane, query, folder))
        work.append(calls)
    return [sys.executable, "-c", LANES, json.dumps(work)]


def write_config(folder: Path, dicom_port: int, scp_port: int, workers: int) -> Path:
    """pacsflow.toml: our AET and storage SCP port (Orthanc knows them as PACSFLOW), the Orthanc as `pacs`."""
    path = folder / "pacsflow.toml"
    path.write_text(
        f'aet = "{OUR_AET}"\nport = {scp_port}\nworkers = {workers}\n\n'
        f'[modalities.pacs]\naet = "{SERVER_AET}"\nhost = "127.0.0.1"\nport = {dicom_port}\n'
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--workers", type=int, default=4, help="threads, processes or workers of each")
    args = parser.parse_args()
    workers = args.workers

    data = generated(args.patients, args.series, args.instances, args.pixels)
    total, megabytes = folder_stats(data)
    scp_port = free_port()
    movescu_ports = [free_port() for _ in range(workers)]
    modalities = {OUR_AET: [OUR_AET, "127.0.0.1", scp_port]}
    for number, port in enumerate(movescu_ports):
        modalities[f"MOVESCU{number}"] = [f"MOVESCU{number}", "127.0.0.1", port]
    # Orthanc 1.10 serves 4 DICOM associations at once by default: never fewer than the variants open
    server = fresh_orthanc(
        "retrieve", aet=SERVER_AET, modalities=modalities, extra={"DicomThreadsCount": max(4, workers)}
    )
    run([sys.executable, str(HERE / "reference_upload.py"), server.url, str(data), str(workers)])
    stored = httpx.get(f"{server.url}/statistics").json()["CountInstances"]
    if stored != total:
        raise Mismatch(f"the server holds {stored} instances after uploading {total} files")
    series = series_list(server.url)
    print(
        f"data: {total} instances in {len(series)} series, {megabytes:.0f} MB "
        f"({megabytes / total * 1000:.0f} KB each), {workers} threads/processes/workers each, "
        f"Orthanc {httpx.get(f'{server.url}/system').json()['Version']} from Debian, {os.cpu_count()} cores",
        flush=True,
    )
    assert server.process is not None
    orthanc_pid = server.process.pid
    series_file = FOLDER / "series.txt"
    FOLDER.mkdir(parents=True, exist_ok=True)
    series_file.write_text("".join(f"{study} {uid}\n" for study, uid in series))
    queries = query_files(series, fresh("queries"))
    host, port = "127.0.0.1", str(server.dicom_port)

    measures: list[Measure] = []
    cpu: dict[str, float] = {}
    orthanc_cpu: dict[str, float] = {}  # the server's share of the same 2 cores, per variant
    failures: list[str] = []

    def measure(
        name: str, command: list[str], out: Path, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        """Run COMMAND, count the files it wrote under OUT against the server, then remove OUT."""
        before = cpu_seconds(orthanc_pid)
        try:
            seconds, rss = run(command, cwd=cwd, env=env)
            found = files_in(out)
            if found != total:
                raise Mismatch(f"{found} files written, the server holds {total} instances")
        except (RuntimeError, OSError) as error:
            failures.append(name)
            print(f"FAILED: {name}: {error}", file=sys.stderr, flush=True)
            return
        finally:
            shutil.rmtree(out, ignore_errors=True)  # the space given back; the next variant starts cold
        cpu[name], orthanc_cpu[name] = LAST_CPU[0], cpu_seconds(orthanc_pid) - before
        result = Measure(name, seconds, total, megabytes, rss)
        measures.append(result)
        print(f"{name}: {seconds:.1f} s, {result.per_second:.0f} instances/s, {rss:.0f} MB peak", flush=True)

    def pacsflow_retrieve(method: str) -> tuple[list[str], Path, Path]:
        """The command, its output folder and its working folder (a pacsflow.toml, a fresh ledger)."""
        config = write_config(fresh(f"config-{method}"), server.dicom_port, scp_port, workers)
        out = fresh(f"pacsflow-{method}")
        command = [
            *PACSFLOW,
            *("-c", str(config), "--ledger", f"sqlite:///{config.parent / 'ledger.db'}", "-q"),
            *("retrieve", "--from", "pacs", "--to", str(out), "--method", method),
            *("--workers", str(workers)),
        ]
        return command, out, config.parent

    out = fresh("reference")
    command = [
        sys.executable,
        str(HERE / "reference_retrieve.py"),
        host,
        port,
        SERVER_AET,
        str(series_file),
        str(out),
        str(workers),
    ]
    measure(REFERENCE, command, out)

    def getscu(_lane: int, query: Path, folder: Path) -> list[str]:
        return ["getscu", "-S", "-aec", SERVER_AET, "-od", str(folder), host, port, str(query)]

    def movescu(lane: int, query: Path, folder: Path) -> list[str]:
        # the lane's own AE title and port, which the Orthanc knows as a move destination
        title, listen = f"MOVESCU{lane}", str(movescu_ports[lane])
        return [
            *("movescu", "-S", "-aet", title, "-aec", SERVER_AET, "-aem", title, "--port", listen),
            *("-od", str(folder), host, port, str(query)),
        ]

    for name, tool, env in ((GETSCU, getscu, None), (GETSCU_NODELAY, getscu, NODELAY)):
        out = fresh(f"getscu-{'nodelay' if env else 'default'}")
        measure(name, lanes(queries, workers, out, tool), out, env=env)
    measure(GET, *pacsflow_retrieve("get"))
    for name, tool, env in ((MOVESCU, movescu, None), (MOVESCU_NODELAY, movescu, NODELAY)):
        out = fresh(f"movescu-{'nodelay' if env else 'default'}")
        measure(name, lanes(queries, workers, out, tool), out, env=env)
    measure(MOVE, *pacsflow_retrieve("move"))
    stop_all()

    if not any(m.name == REFERENCE for m in measures):
        print("no reference figure: nothing to compare with", file=sys.stderr)
        return 1
    print(table(measures, REFERENCE))
    print(f"CPU seconds (user + system) on {os.cpu_count()} cores; DCMTK: all its processes together")
    print(f"{'variant':<44} {'CPU s':>8} {'CPU/s':>8} {'Orthanc CPU s':>14}")
    for m in measures:
        print(f"{m.name:<44} {cpu[m.name]:8.1f} {cpu[m.name] / m.seconds:8.2f} {orthanc_cpu[m.name]:14.1f}")
    by_name = {m.name: m for m in measures}

    def ratio(ours: str, theirs: str) -> float:
        return by_name[ours].per_second / by_name[theirs].per_second

    for ours, theirs in TARGETS:
        if ours in by_name and theirs in by_name:
            value = ratio(ours, theirs)
            print(f"{ours} / {theirs}: {value:.2f}x (target >= 0.9): {'met' if value >= 0.9 else 'NOT met'}")
        else:
            print(f"{ours} / {theirs}: no figure (a variant failed)")
    for name in (GETSCU, GETSCU_NODELAY, GET, MOVESCU, MOVESCU_NODELAY, MOVE):
        if name in by_name:
            print(f"{name} / reference: {ratio(name, REFERENCE):.2f}x")
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
