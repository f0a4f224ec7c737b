"""retrieve: C-FIND patients, studies and series on a real Orthanc acting as the PACS, then C-MOVE (to our
own storage SCP) or C-GET each series, check its count, and ZIP each patient."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsflow.ledger import Ledger
from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc, free_port, start_orthanc
from pacsflow.synthetic import Shape, instance_bytes, instance_keys, make_instance, patient_id
from tests.conftest import cli, latest_run, run_cli, start_cli, wait_for
from tests.dcmtk_peer import Dcmqrscp
from tests.qr_peer import QRPeer

SHAPE = Shape(patients=3, studies=2, series=2, instances=3, pixels=16, seed=12)
OUR_AET = "PACSFLOW"


@pytest.fixture(scope="module")
def scp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def _pacs(tmp_path_factory: pytest.TempPathFactory, scp_port: int) -> Iterator[LocalOrthanc]:
    """An Orthanc as the remote PACS: it knows our AET as a move destination."""
    orthanc = start_orthanc(
        tmp_path_factory.mktemp("pacs"), "pacs", modalities={OUR_AET: [OUR_AET, "127.0.0.1", scp_port]}
    )
    with Orthanc(orthanc.server_config()) as client:
        for key in instance_keys(SHAPE):
            client.upload(instance_bytes(SHAPE, *key))
    yield orthanc
    orthanc.stop()


@pytest.fixture
def pacs(_pacs: LocalOrthanc) -> LocalOrthanc:
    return _pacs


def write_config(workdir: Path, pacs: LocalOrthanc | Dcmqrscp, scp_port: int, extra: str = "") -> Path:
    """pacsflow.toml: our AET and storage SCP port, PACS as the modality `pacs`, and EXTRA."""
    node = pacs.modality if isinstance(pacs, Dcmqrscp) else pacs
    port = node.port if isinstance(pacs, Dcmqrscp) else pacs.dicom_port
    path = workdir / "pacsflow.toml"
    path.write_text(
        f"""
aet = "{OUR_AET}"
port = {scp_port}
workers = 4

[modalities.pacs]
aet = "{node.aet}"
host = "127.0.0.1"
port = {port}
{extra}
"""
    )
    return path


def received(out: Path) -> dict[str, set[str]]:
    """SOPInstanceUIDs under OUT by SeriesInstanceUID (the folder layout Patient/Study/Series/SOP.dcm)."""
    found: dict[str, set[str]] = {}
    for path in out.rglob("*.dcm"):
        found.setdefault(path.parent.name, set()).add(path.stem)
    return found


def expected_series() -> dict[str, int]:
    from pacsflow.synthetic import make_instance

    counts: dict[str, int] = {}
    for key in instance_keys(SHAPE):
        uid = str(make_instance(SHAPE, *key).SeriesInstanceUID)
        counts[uid] = counts.get(uid, 0) + 1
    return counts


@pytest.mark.parametrize("method", ["move", "get"])
def test_retrieve_every_series_of_listed_patients(
    workdir: Path, pacs: LocalOrthanc, scp_port: int, method: str
) -> None:
    write_config(workdir, pacs, scp_port)
    (workdir / "ids.txt").write_text("\n".join(patient_id(SHAPE, p) for p in range(SHAPE.patients)) + "\n")
    result = cli(
        "retrieve", "--from", "pacs", "--to", "out", "--patients", "ids.txt", "--method", method, cwd=workdir
    )
    assert result.returncode == 0, result.stdout + result.stderr
    got = received(workdir / "out")
    assert {series: len(uids) for series, uids in got.items()} == expected_series()
    assert "12 of 12 series complete (36 instances)" in result.stdout


def test_per_patient_zips_and_a_rerun_retrieves_nothing(
    workdir: Path, pacs: LocalOrthanc, scp_port: int
) -> None:
    write_config(workdir, pacs, scp_port)
    first = cli("retrieve", "--from", "pacs", "--to", "out", "--per-patient-zip", "zips", cwd=workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    zips = sorted(path.name for path in (workdir / "zips").glob("*.zip"))
    assert zips == sorted(f"{patient_id(SHAPE, p)}__seriesCount4.zip" for p in range(SHAPE.patients))
    with zipfile.ZipFile(workdir / "zips" / zips[0]) as archive:
        assert len(archive.namelist()) == 12 and archive.testzip() is None
    again = cli("retrieve", "--from", "pacs", "--to", "out", "--per-patient-zip", "zips", cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    ledger = Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}")
    latest = ledger.runs(1)[0]
    series = ledger.items(latest.id, kind="series")
    assert len(series) == 12 and {item.last_error for item in series} == {"already retrieved"}


def study_dates() -> dict[str, str]:
    """StudyDate by StudyInstanceUID of the generated archive."""
    from pacsflow.synthetic import make_instance

    return {
        str(ds.StudyInstanceUID): str(ds.StudyDate)
        for ds in (
            make_instance(SHAPE, p, st, 0, 0) for p in range(SHAPE.patients) for st in range(SHAPE.studies)
        )
    }


def test_a_selection_function_a_date_range_and_a_modality_narrow_what_is_retrieved(
    workdir: Path, pacs: LocalOrthanc, scp_port: int
) -> None:
    from pacsflow.synthetic import make_instance

    write_config(workdir, pacs, scp_port)
    (workdir / "rules.py").write_text(
        "def pick(patient):\n"
        f"    return patient['PatientID'] != {patient_id(SHAPE, 1)!r} and patient['PatientSex'] in 'MFO'\n"
    )
    dates = sorted(study_dates().values())
    first, last = dates[1], dates[-2]  # the oldest and the newest study fall outside
    result = cli(
        "retrieve", "--from", "pacs", "--to", "out", "--select", "rules.py:pick",
        "--from-date", f"{first[:4]}-{first[4:6]}-{first[6:]}", "--to-date", last, cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    wanted = {
        str(ds.SeriesInstanceUID)
        for key in instance_keys(SHAPE)
        if (ds := make_instance(SHAPE, *key)) and key[0] != 1 and first <= str(ds.StudyDate) <= last
    }
    assert set(received(workdir / "out")) == wanted and wanted

    modality = str(make_instance(SHAPE, 0, 0, 0, 0).Modality)
    only = cli("retrieve", "--from", "pacs", "--to", "ct", "--modality", modality.lower(), cwd=workdir)
    assert only.returncode == 0, only.stdout + only.stderr
    of_modality = {
        str(ds.SeriesInstanceUID)
        for key in instance_keys(SHAPE)
        if (ds := make_instance(SHAPE, *key)).Modality == modality
    }
    assert set(received(workdir / "ct")) == of_modality


def test_a_listed_patient_the_node_does_not_have_is_skipped_with_a_reason(
    workdir: Path, pacs: LocalOrthanc, scp_port: int
) -> None:
    write_config(workdir, pacs, scp_port)
    (workdir / "ids.csv").write_text(f"UHID,Uploaded\nNOSUCH-1,no\n{patient_id(SHAPE, 2)},no\n")
    result = cli("retrieve", "--from", "pacs", "--to", "out", "--patients", "ids.csv", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    patients = latest_run(workdir, kind="patient")
    assert sorted((item.status, item.last_error) for item in patients) == [
        ("done", None),
        ("skipped", "no matching study on the node"),
    ]
    assert "NOSUCH-1" not in result.stdout + result.stderr  # no PatientID in what is shown
    assert len(received(workdir / "out")) == SHAPE.studies * SHAPE.series


@pytest.mark.parametrize("method", ["move", "get"])
def test_retrieve_into_an_orthanc_server_and_write_the_inventory(
    workdir: Path, pacs: LocalOrthanc, orthanc_b: LocalOrthanc, client_b: Orthanc, scp_port: int, method: str
) -> None:
    write_config(workdir, pacs, scp_port, f'[servers.b]\nurl = "{orthanc_b.url}"\n')
    result = cli("retrieve", "--from", "pacs", "--to", "b", "--method", method, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(client_b.ids("instances")) == SHAPE.total
    run = latest_run(workdir)
    inventory = cli("inventory", "--from", run.id, "--out", "inventory.csv", cwd=workdir)
    assert inventory.returncode == 0, inventory.stdout + inventory.stderr
    import csv

    with open(workdir / "inventory.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    assert {(row["expected_instances"], row["present_instances"], row["status"]) for row in rows} == {
        ("3", "3", "complete")
    }
    assert (workdir / "inventory.csv").stat().st_mode & 0o777 == 0o600
    assert {row["PatientID"] for row in rows} == {patient_id(SHAPE, p) for p in range(SHAPE.patients)}


SMALL = Shape(patients=2, studies=1, series=3, instances=3, pixels=16, seed=13)


@pytest.fixture
def own_pacs(tmp_path: Path, scp_port: int) -> Iterator[LocalOrthanc]:
    """A PACS of this test's own (the test changes it): 2 patients, 6 series of 3 instances."""
    orthanc = start_orthanc(
        tmp_path / "own-pacs", "own", modalities={OUR_AET: [OUR_AET, "127.0.0.1", scp_port]}
    )
    with Orthanc(orthanc.server_config()) as client:
        for key in instance_keys(SMALL):
            client.upload(instance_bytes(SMALL, *key))
    yield orthanc
    orthanc.stop()


def test_a_series_that_lost_an_instance_after_it_was_found_is_incomplete_and_its_zip_not_written(
    workdir: Path, own_pacs: LocalOrthanc, scp_port: int
) -> None:
    from pacsflow.config import ModalityConfig, Settings
    from pacsflow.engine import EXIT_FAILED, Engine
    from pacsflow.ops.retrieve import Retrieve
    from pacsflow.synthetic import make_instance

    gone = make_instance(SMALL, 0, 0, 1, 2)

    class LosingOneAfterTheFind(Retrieve):
        """The real operation; between the series C-FIND and the retrieval an instance is deleted on the
        PACS (as a PACS's own cleaning may do)."""

        def _study(self, item):  # type: ignore[no-untyped-def]
            outcome = super()._study(item)
            with Orthanc(own_pacs.server_config()) as client:
                found = client.find("Instance", {"SOPInstanceUID": str(gone.SOPInstanceUID)})
                for instance in found:
                    client.delete_resource("instances", instance)
            return outcome

    settings = Settings(
        ledger=f"sqlite:///{workdir / 'l.db'}",
        aet=OUR_AET,
        port=scp_port,
        modalities={"pacs": ModalityConfig(aet=own_pacs.aet, host="127.0.0.1", port=own_pacs.dicom_port)},
    )
    ledger = Ledger(settings.ledger)
    op = LosingOneAfterTheFind(
        settings, {"from": "pacs", "to": str(workdir / "out"), "per_patient_zip": str(workdir / "zips")}
    )
    result = Engine(ledger, settings).start(op)
    assert result.exit_code == EXIT_FAILED
    failed = ledger.items(result.run_id, status="failed")
    assert sorted((item.kind, item.last_error) for item in failed) == [
        ("archive", f"zip/{failed[0].key[4:]}: ZIP not written: 1 item of the patient not complete (series); "
         "`pacsflow retry RUN` asks for them again"),
        ("series", "series 2 CT series 2: incomplete: 2 of 3 instances; the node lists 2 now"),
    ]  # fmt: skip
    (short,) = [item for item in failed if item.kind == "series"]
    assert short.result == {"expected": 3, "present": 2}
    # the other patient is whole, and zipped; this one has no ZIP
    assert [path.name for path in (workdir / "zips").glob("*.zip")] == [
        f"{patient_id(SMALL, 1)}__seriesCount3.zip"
    ]


def test_a_node_that_does_not_know_us_is_a_clear_error(workdir: Path, tmp_path: Path, scp_port: int) -> None:
    strict = start_orthanc(tmp_path / "strict", "strict", extra={"DicomAlwaysAllowFind": False})
    try:
        write_config(workdir, strict, scp_port)
        refused = cli("retrieve", "--from", "pacs", "--to", "out", cwd=workdir)
        assert refused.returncode == 2
        assert "answers C-ECHO but refuses our C-FIND" in refused.stderr
        assert (
            f"add {OUR_AET} with this machine's address and DICOM port to its DicomModalities"
            in refused.stderr
        )
    finally:
        strict.stop()
    unknown_destination = start_orthanc(tmp_path / "nomove", "nomove")
    try:
        with Orthanc(unknown_destination.server_config()) as client:
            client.upload(instance_bytes(SMALL, 0, 0, 0, 0))
        write_config(workdir, unknown_destination, scp_port)
        result = cli("retrieve", "--from", "pacs", "--to", "out2", cwd=workdir)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "C-MOVE failed (status 0xC000) and never connected to our storage SCP" in result.stderr
        assert f"it likely does not know our AET '{OUR_AET}' as a move destination" in result.stderr
        assert f"port {scp_port} to its DICOM modalities, or use --method get" in result.stderr
        got = cli("retrieve", "--from", "pacs", "--to", "out3", "--method", "get", cwd=workdir)
        assert got.returncode == 0 and len(received(workdir / "out3")) == 1
    finally:
        unknown_destination.stop()


def test_a_node_down_for_30_seconds_mid_run_is_waited_for_and_nothing_is_lost(
    workdir: Path, own_pacs: LocalOrthanc, scp_port: int
) -> None:
    write_config(workdir, own_pacs, scp_port)
    # 1 request a second: the run lasts long enough to stop the node in the middle of it
    process = start_cli(
        "retrieve", "--from", "pacs", "--to", "out", "--rate", "60/min", cwd=workdir, log="run.log"
    )
    try:
        wait_for(lambda: any(item.status == "done" for item in latest_run(workdir, kind="series") or []),
                 "a first series", process)  # fmt: skip
        own_pacs.stop()
        stopped = time.monotonic()
        time.sleep(30)
        own_pacs.start()
        assert process.wait(120) == 0, (workdir / "run.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
    log = (workdir / "run.log").read_text()
    assert "waiting for pacs (down since" in log and "pacs answers again after" in log
    assert time.monotonic() - stopped >= 30
    series = latest_run(workdir, kind="series")
    assert len(series) == 6 and {item.status for item in series} == {"done"}
    assert max(item.attempts for item in series) <= 2  # waiting spent no attempts (one in flight may)
    assert {uid: len(files) for uid, files in received(workdir / "out").items()} == {
        uid: 3 for uid in small_series()
    }


def small_series() -> set[str]:
    from pacsflow.synthetic import make_instance

    return {str(make_instance(SMALL, *key).SeriesInstanceUID) for key in instance_keys(SMALL)}


TINY = Shape(patients=1, studies=1, series=2, instances=2, pixels=16, seed=14)


@pytest.mark.parametrize("method", ["move", "get"])
def test_retrieve_from_dcmqrscp_holds_the_rate_over_every_request(
    workdir: Path, tmp_path: Path, scp_port: int, method: str
) -> None:
    """DCMTK's Q/R archive as the node (it gives no NumberOfSeriesRelatedInstances: each series is
    counted with an IMAGE-level C-FIND); the node's own log says when each request came."""
    from pacsflow.synthetic import instance_path

    files = [instance_path(tmp_path / "files", TINY, *key) for key in instance_keys(TINY)]
    for path, key in zip(files, instance_keys(TINY), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(instance_bytes(TINY, *key))
    rate = 120  # per minute: 2 a second
    with Dcmqrscp(tmp_path / "dcmqr", move_destinations={OUR_AET: ("127.0.0.1", scp_port)}) as peer:
        peer.store(files)
        write_config(workdir, peer, scp_port)
        time.sleep(0.1)  # the store's own requests, logged to the millisecond, are before the run's
        started = time.time()
        command = ["retrieve", "--from", "pacs", "--to", "out", "--method", method, "--rate", f"{rate}/min"]
        result = cli(*command, cwd=workdir)
        assert result.returncode == 0, result.stdout + result.stderr
        requests = [at for at, kind in peer.requests() if at >= started and kind != "STORE"]
    assert {uid: len(sops) for uid, sops in received(workdir / "out").items()} == {
        str(make_instance(TINY, 0, 0, se, 0).SeriesInstanceUID): 2 for se in range(2)
    }
    # associations, C-FINDs (search, patient, study, two IMAGE-level counts) and C-MOVE/C-GETs
    assert len(requests) >= 9
    # in any stretch of time, at most one request more than the rate allows for it: no minute ever sees
    # more than the limit. The node logs a request when it gets to it: on a busy machine up to a second
    # after it was paced (seen: 0.6 s, dcmqrscp forks for each association), so a stretch may look that
    # much shorter than it was; a request that skips the limit still shows (tested by removing a token)
    for first in range(len(requests)):
        for last in range(first + 1, len(requests)):
            span = requests[last] - requests[first]
            assert last - first <= (span + 1.0) * rate / 60 + 1, (first, last, span)


def test_a_patients_zip_is_written_while_later_patients_are_still_being_retrieved(
    workdir: Path, tmp_path: Path, scp_port: int
) -> None:
    """Seed 004's assembly line: the first patient's ZIP is closed before the last patient's series are
    retrieved, and series are retrieved before every patient is looked up (no barrier over the run; the
    engine claims at most four items per worker ahead)."""
    import sqlite3

    many = Shape(patients=10, studies=1, series=1, instances=1, pixels=8, seed=15)
    pacs = start_orthanc(tmp_path / "many", "many", modalities={OUR_AET: [OUR_AET, "127.0.0.1", scp_port]})
    try:
        with Orthanc(pacs.server_config()) as client:
            for key in instance_keys(many):
                client.upload(instance_bytes(many, *key))
        write_config(workdir, pacs, scp_port)
        result = cli(
            "retrieve", "--from", "pacs", "--to", "out", "--per-patient-zip", "zips", "-w", "1", cwd=workdir
        )
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        pacs.stop()
    run = latest_run(workdir)
    with sqlite3.connect(workdir / ".pacsflow" / "ledger.db") as db:
        rows = db.execute(
            "SELECT kind, started_at, finished_at FROM items WHERE run_id = ?", (run.id,)
        ).fetchall()
    assert sum(1 for kind, _, _ in rows if kind == "archive") == 10
    first_zip = min(finished for kind, _, finished in rows if kind == "archive")
    last_series = max(started for kind, started, _ in rows if kind == "series")
    assert first_zip < last_series
    first_series = min(started for kind, started, _ in rows if kind == "series")
    last_patient = max(started for kind, started, _ in rows if kind == "patient")
    assert first_series < last_patient


def test_a_node_down_longer_than_give_up_after_stops_the_run_with_the_rest_pending(
    workdir: Path, own_pacs: LocalOrthanc, scp_port: int
) -> None:
    write_config(workdir, own_pacs, scp_port)
    process = start_cli(
        "retrieve", "--from", "pacs", "--to", "out", "--rate", "60/min", "--give-up-after", "5s",
        cwd=workdir, log="run.log",
    )  # fmt: skip
    try:
        wait_for(lambda: any(item.status == "done" for item in latest_run(workdir, kind="series") or []),
                 "a first series", process)  # fmt: skip
        own_pacs.kill()  # at once: a graceful stop lets the moves in progress, and more, finish first
        assert process.wait(120) == 1, (workdir / "run.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert "gave up: pacs has not answered since" in (workdir / "run.log").read_text()
    series = latest_run(workdir, kind="series")
    assert "failed" not in {item.status for item in series} and "pending" in {item.status for item in series}
    own_pacs.start()
    resumed = cli("resume", latest_run(workdir).id, cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert {uid: len(files) for uid, files in received(workdir / "out").items()} == {
        uid: 3 for uid in small_series()
    }


def write_peer_config(workdir: Path, peer: QRPeer) -> None:
    (workdir / "pacsflow.toml").write_text(
        f"""
aet = "{OUR_AET}"
port = {free_port()}

[modalities.pacs]
aet = "{peer.modality.aet}"
host = "127.0.0.1"
port = {peer.port}
"""
    )


PEER_SHAPE = Shape(patients=1, studies=1, series=2, instances=3, pixels=8, seed=16)


def test_a_node_that_neither_counts_nor_lists_instances_is_still_asked_for_each_series(workdir: Path) -> None:
    """No NumberOfSeriesRelatedInstances and no IMAGE-level answers (many PACS): what the node says it
    sent is the count; nothing is 'already retrieved' without a request."""
    data = [make_instance(PEER_SHAPE, *key) for key in instance_keys(PEER_SHAPE)]
    with QRPeer(data, counts=False, image_level=False) as peer:
        write_peer_config(workdir, peer)
        result = cli("retrieve", "--from", "pacs", "--to", "out", "--method", "get", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sum(len(uids) for uids in received(workdir / "out").values()) == 6
    assert [item.result for item in latest_run(workdir, kind="series")] == [{"expected": 3, "present": 3}] * 2


def test_a_merged_patient_and_a_list_in_other_case_are_found_and_zipped(workdir: Path) -> None:
    """The node answers C-FIND with another PatientID than its files carry (a merged patient) and
    matches PatientIDs without case; the list names the patient in lower case."""
    data = [make_instance(PEER_SHAPE, *key) for key in instance_keys(PEER_SHAPE)]
    with QRPeer(data, answered_id="MERGED-1", ignore_case=True) as peer:
        write_peer_config(workdir, peer)
        (workdir / "ids.txt").write_text("merged-1\n")
        result = cli(
            "retrieve", "--from", "pacs", "--to", "out", "--method", "get", "--patients", "ids.txt",
            "--per-patient-zip", "zips", cwd=workdir,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert {item.status for item in latest_run(workdir, kind="series")} == {"done"}
    (archive,) = (workdir / "zips").glob("*.zip")
    assert archive.name == "MERGED-1__seriesCount2.zip"
    with zipfile.ZipFile(archive) as opened:
        assert len(opened.namelist()) == 6  # the files, under the PatientID they carry
        assert {name.split("/", 1)[0] for name in opened.namelist()} == {str(data[0].PatientID)}


def test_a_study_that_could_not_be_found_holds_its_patients_zip_back_until_retry(
    workdir: Path, tmp_path: Path, scp_port: int
) -> None:
    shape = Shape(patients=1, studies=2, series=2, instances=2, pixels=8, seed=21)
    refused = str(make_instance(shape, 0, 1, 0, 0).StudyInstanceUID)
    lua = tmp_path / "refuse.lua"
    lua.write_text(
        "function IncomingFindRequestFilter(source, origin)\n"
        f"  if source['0008,0052'] == 'SERIES' and source['0020,000d'] == '{refused}' then\n"
        "    error('refused for the test')\n  end\n  return source\nend\n"
    )
    pacs = start_orthanc(
        tmp_path / "lua",
        "lua",
        modalities={OUR_AET: [OUR_AET, "127.0.0.1", scp_port]},
        extra={"LuaScripts": [str(lua)]},
    )
    try:
        with Orthanc(pacs.server_config()) as client:
            for key in instance_keys(shape):
                client.upload(instance_bytes(shape, *key))
        write_config(workdir, pacs, scp_port)
        first = cli("retrieve", "--from", "pacs", "--to", "out", "--per-patient-zip", "zips", cwd=workdir)
        assert first.returncode == 1
        assert not list((workdir / "zips").glob("*.zip"))  # not a ZIP with half the patient in it
        failed = latest_run(workdir, kind="archive", status="failed")
        assert "ZIP not written: 1 item of the patient not complete (study)" in failed[0].last_error
        pacs.stop()
        pacs.extra = {}
        pacs.start()
        again = cli("retry", latest_run(workdir).id, cwd=workdir)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        pacs.stop()
    (archive,) = (workdir / "zips").glob("*.zip")
    with zipfile.ZipFile(archive) as opened:
        assert archive.name.endswith("__seriesCount4.zip") and len(opened.namelist()) == 8


def test_a_worker_does_not_rejoin_at_once_a_run_stopped_by_a_fatal_error(
    workdir: Path, tmp_path: Path, scp_port: int
) -> None:
    """A node that does not know our AE title stops the run; a worker (--once) leaves it be, and the
    series' claims spend none of their attempts (it spent them all in a tight loop)."""
    nomove = start_orthanc(tmp_path / "nomove", "nomove")
    try:
        with Orthanc(nomove.server_config()) as client:
            client.upload(instance_bytes(SMALL, 0, 0, 0, 0))
        write_config(workdir, nomove, scp_port)
        planned = cli("retrieve", "--from", "pacs", "--to", "out", "--plan-only", cwd=workdir)
        assert planned.returncode == 0, planned.stdout + planned.stderr
        worker = cli("worker", "--once", cwd=workdir)
        assert worker.returncode == 2, worker.stdout + worker.stderr
    finally:
        nomove.stop()
    (series,) = latest_run(workdir, kind="series")
    assert series.status == "pending" and series.attempts == 0
    assert "never connected to our storage SCP" in str(series.last_error)


def test_a_resume_needs_neither_the_patient_list_nor_the_folder_it_was_started_in(
    workdir: Path, pacs: LocalOrthanc, scp_port: int
) -> None:
    write_config(workdir, pacs, scp_port)
    (workdir / "ids.txt").write_text(f"{patient_id(SHAPE, 0)}\n")
    (workdir / "rules.py").write_text("def pick(patient):\n    return True\n")
    planned = cli(
        "retrieve", "--from", "pacs", "--to", "out", "--patients", "ids.txt", "--select", "rules.py:pick",
        "--plan-only", cwd=workdir,
    )  # fmt: skip
    assert planned.returncode == 0, planned.stdout + planned.stderr
    (workdir / "ids.txt").unlink()  # the list was read when the run was planned
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pacsflow.toml").write_text((workdir / "pacsflow.toml").read_text())
    (elsewhere / ".pacsflow").symlink_to(workdir / ".pacsflow")
    resumed = cli("resume", latest_run(workdir).id, cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(received(workdir / "out")) == SHAPE.studies * SHAPE.series  # into the folder named at start


def test_verbose_logs_show_no_patient_id_without_log_phi(
    workdir: Path, pacs: LocalOrthanc, scp_port: int
) -> None:
    """pynetdicom dumps every C-FIND identifier at INFO (shown with -v): only with --log-phi too."""
    write_config(workdir, pacs, scp_port)
    patient = patient_id(SHAPE, 0)
    (workdir / "ids.txt").write_text(f"{patient}\n")
    args = ["retrieve", "--from", "pacs", "--to", "out", "--patients", "ids.txt", "--method", "get"]
    hidden = run_cli("-v", *args, cwd=workdir)
    assert hidden.returncode == 0, hidden.stderr
    assert "Requesting Association" in hidden.stderr  # pynetdicom's lines are there
    assert patient not in hidden.stderr
    shown = run_cli("-v", "--log-phi", *args, cwd=workdir)
    assert shown.returncode == 0 and patient in shown.stderr


def test_a_select_function_that_fails_stops_the_run_without_naming_the_patient(
    workdir: Path, pacs: LocalOrthanc, scp_port: int
) -> None:
    write_config(workdir, pacs, scp_port)
    (workdir / "rules.py").write_text("def pick(patient):\n    return int(patient['PatientID']) > 3\n")
    result = run_cli("retrieve", "--from", "pacs", "--to", "out", "--select", "rules.py:pick", cwd=workdir)
    assert result.returncode == 2
    assert "raised ValueError for a patient" in result.stderr
    assert patient_id(SHAPE, 0)[:5] not in result.stderr  # int('PF012-00000') would have shown it


def test_a_patient_with_no_series_of_the_modality_gets_no_zip(workdir: Path) -> None:
    """The node ignores ModalitiesInStudy in its matching (dcmqrscp does): the patient's study is found,
    none of its series is of the modality asked for, and no empty ZIP is written."""
    data = [make_instance(PEER_SHAPE, *key) for key in instance_keys(PEER_SHAPE)]
    other = "MR" if str(data[0].Modality) != "MR" else "CT"
    with QRPeer(data) as peer:
        write_peer_config(workdir, peer)
        result = cli(
            "retrieve", "--from", "pacs", "--to", "out", "--method", "get", "--modality", other,
            "--per-patient-zip", "zips", cwd=workdir,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list((workdir / "zips").glob("*.zip"))
    (archive,) = latest_run(workdir, kind="archive")
    assert (archive.status, archive.last_error) == ("skipped", "no series to zip")
    assert "0 ZIPs of 0 complete" in result.stdout


def test_a_destination_orthanc_down_mid_run_pauses_it_and_nothing_is_lost(
    workdir: Path, own_pacs: LocalOrthanc, tmp_path: Path, scp_port: int
) -> None:
    """Instances the storage SCP could not post (the destination Orthanc restarting) make the run wait
    for that server, then ask for them again; no series fails."""
    destination = start_orthanc(tmp_path / "dest", "dest")
    try:
        write_config(workdir, own_pacs, scp_port, f'[servers.dest]\nurl = "{destination.url}"\n')
        process = start_cli(
            "retrieve", "--from", "pacs", "--to", "dest", "--rate", "60/min", cwd=workdir, log="run.log"
        )
        try:
            wait_for(lambda: any(item.status == "done" for item in latest_run(workdir, kind="series") or []),
                     "a first series", process)  # fmt: skip
            destination.kill()
            time.sleep(8)
            destination.start()
            assert process.wait(180) == 0, (workdir / "run.log").read_text()
        finally:
            if process.poll() is None:
                process.kill()
        assert "waiting for dest (down since" in (workdir / "run.log").read_text()
        assert {item.status for item in latest_run(workdir, kind="series")} == {"done"}
        with Orthanc(destination.server_config()) as client:
            assert len(client.ids("instances")) == SMALL.total
    finally:
        destination.stop()


def test_more_than_ten_workers_moving_at_once_are_all_received(
    workdir: Path, tmp_path: Path, scp_port: int
) -> None:
    """16 workers: the node opens 16 storage associations to our SCP at once (pynetdicom accepts 10 by
    default: the rest were rejected, and the run stopped saying the node did not know our AE title)."""
    shape = Shape(patients=4, studies=2, series=4, instances=4, pixels=8, seed=25)
    pacs = start_orthanc(
        tmp_path / "busy", "busy", modalities={OUR_AET: [OUR_AET, "127.0.0.1", scp_port]},
        extra={"DicomThreadsCount": 32},
    )  # fmt: skip
    try:
        with Orthanc(pacs.server_config()) as client:
            for key in instance_keys(shape):
                client.upload(instance_bytes(shape, *key))
        write_config(workdir, pacs, scp_port)
        result = cli("retrieve", "--from", "pacs", "--to", "out", "--workers", "16", cwd=workdir)
    finally:
        pacs.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert sum(len(uids) for uids in received(workdir / "out").values()) == shape.total
    assert {item.attempts for item in latest_run(workdir, kind="series")} == {1}  # none refused, retried
