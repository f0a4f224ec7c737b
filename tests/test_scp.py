"""pacsflow scp: a storage SCP that DCMTK's echoscu and storescu talk to, into a folder or a real Orthanc."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from pacsflow.api import Pacsflow
from pacsflow.dicomfiles import read_uids
from pacsflow.errors import ConfigError
from pacsflow.ledger import Ledger
from pacsflow.orthanc import Orthanc
from pacsflow.services.scp import StorageSCP
from pacsflow.synthetic import Shape, instance_bytes
from tests.conftest import cli, ledger_path, start_cli, wait_for
from tests.test_download_zip import read_only

SHAPE = Shape(patients=2, series=2, instances=2, pixels=16, seed=91)


def leftovers(out: Path) -> list[Path]:
    """Files that are not received instances (a temporary file a write left behind)."""
    return [path for path in out.rglob("*") if path.is_file() and path.suffix != ".dcm"]


def instances(root: Path, shape: Shape = SHAPE) -> list[Path]:
    """SHAPE's instances as files under ROOT (flat: storescu takes them as arguments)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in range(shape.patients):
        for st in range(shape.studies):
            for se in range(shape.series):
                for i in range(shape.instances):
                    path = root / f"{p}-{st}-{se}-{i}.dcm"
                    path.write_bytes(instance_bytes(shape, p, st, se, i))
                    paths.append(path)
    return paths


def stored_path(out: Path, sent: Path) -> Path:
    ds = pydicom.dcmread(sent, stop_before_pixels=True)
    return out / ds.PatientID / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def after_meta(path: Path) -> bytes:
    """A file's bytes after its file meta: the dataset as it was encoded."""
    with path.open("rb") as fh:
        pydicom.filereader.read_preamble(fh, False)
        pydicom.filereader._read_file_meta_info(fh)
        return fh.read()


@contextmanager
def scp_in_thread(
    workdir: Path, to: str, *, accept: tuple[str, ...] = (), port: int = 0
) -> Iterator[StorageSCP]:
    """The SCP of `pacsflow scp` (its service layer) on a free loopback port, in this process."""
    started: list[StorageSCP] = []
    stop = threading.Event()
    config = workdir / "pacsflow.toml"
    pf = Pacsflow(config=config if config.exists() else None, ledger=f"sqlite:///{workdir / 'ledger.db'}")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            pf.scp(
                to, port=port, bind="127.0.0.1", accept_aets=accept, stop=stop, on_listening=started.append
            )
        except BaseException as exc:  # shown by the test, not lost in the thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: started or failure, "the SCP to listen")
        if failure:
            raise failure[0]
        yield started[0]
    finally:
        stop.set()
        thread.join(60)
        pf.close()
    assert not failure, failure


def storescu(scp: StorageSCP, *args: str, aet: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    host, port = scp.address
    return subprocess.run(
        ["storescu", "-aet", aet, "-aec", scp.aet, host, str(port), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_echo_and_store_land_each_instance_as_sent_at_its_path(workdir: Path) -> None:
    sent = instances(workdir / "sent")
    out = workdir / "out"
    with scp_in_thread(workdir, str(out)) as scp:
        host, port = scp.address
        echo = subprocess.run(["echoscu", "-aec", scp.aet, host, str(port)], capture_output=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        done = storescu(scp, *map(str, sent))
        assert done.returncode == 0, done.stderr
    for path in sent:
        stored = stored_path(out, path)
        assert after_meta(stored) == after_meta(path)  # explicit little endian as sent, not re-encoded
        assert pydicom.dcmread(stored) == pydicom.dcmread(path)
    assert leftovers(out) == []
    run = Ledger(f"sqlite:///{workdir / 'ledger.db'}").runs(1)[0]
    assert (run.operation, run.status, run.counts) == ("scp", "stopped", {"done": len(sent)})
    assert run.bytes == sum(stored_path(out, path).stat().st_size for path in sent)


def test_compressed_instances_are_kept_as_received(workdir: Path) -> None:
    rle, deflated = workdir / "rle.dcm", workdir / "deflated.dcm"
    first, second = instances(workdir / "sent", Shape(instances=2, pixels=16, seed=92))
    ds = pydicom.dcmread(first)
    original_pixels = ds.pixel_array.copy()
    ds.compress(RLELossless)
    ds.save_as(rle)
    plain = pydicom.dcmread(second)
    plain.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    plain.save_as(deflated, enforce_file_format=True)
    out = workdir / "out"
    with scp_in_thread(workdir, str(out)) as scp:
        assert storescu(scp, "-xr", str(rle)).returncode == 0
        assert storescu(scp, "-xd", str(deflated)).returncode == 0
    kept = pydicom.dcmread(stored_path(out, rle))
    assert kept.file_meta.TransferSyntaxUID == RLELossless
    assert kept.PixelData == pydicom.dcmread(rle).PixelData  # the RLE fragments as sent
    assert (kept.pixel_array == original_pixels).all()
    kept = pydicom.dcmread(stored_path(out, deflated))
    assert kept.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert kept == pydicom.dcmread(deflated)


def test_only_accepted_calling_aets_may_send(workdir: Path) -> None:
    sent = instances(workdir / "sent", Shape(pixels=16, seed=93))
    out = workdir / "out"
    with scp_in_thread(workdir, str(out), accept=("CT01",)) as scp:
        refused = storescu(scp, str(sent[0]), aet="INTRUDER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
        assert not out.exists() or not any(out.iterdir())
        assert storescu(scp, str(sent[0]), aet="CT01").returncode == 0
    assert stored_path(out, sent[0]).exists()


def test_an_unwritable_folder_answers_a_failure_and_the_scp_keeps_going(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sent = instances(workdir / "sent", Shape(instances=2, pixels=16, seed=94))
    out = workdir / "out"
    with scp_in_thread(workdir, str(out)) as scp:
        out.rmdir()
        with read_only(out):
            failed = storescu(scp, "-v", str(sent[0]))
            assert failed.returncode != 0  # the sender knows
            assert "Received Store Response (Error: CannotUnderstand)" in failed.stderr
        assert storescu(scp, str(sent[1])).returncode == 0  # still listening, writing again
        assert storescu(scp, str(sent[0])).returncode == 0  # sent again once the folder is writable
    assert stored_path(out, sent[0]).exists() and stored_path(out, sent[1]).exists()
    [line] = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert line == "scp: C-STORE from STORESCU refused with status 0xC000: Operation not permitted"
    ledger = Ledger(f"sqlite:///{workdir / 'ledger.db'}")
    run = ledger.runs(1)[0]
    assert run.counts == {"done": 2}  # the instance received again counts as it went last
    again = next(item for item in ledger.items(run.id) if item.key == pydicom.dcmread(sent[0]).SOPInstanceUID)
    assert again.attempts == 1 and again.last_error is None and again.result["status"] == "0x0000"
    assert again.bytes == stored_path(out, sent[0]).stat().st_size


def test_to_a_server_forwards_each_instance(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    sent = instances(workdir / "sent", Shape(series=1, instances=3, pixels=16, seed=95))
    with scp_in_thread(workdir, "a") as scp:
        assert scp.destination.action == "sending to"
        assert storescu(scp, *map(str, sent)).returncode == 0
    held = client_a.get_json("/instances")
    assert len(held) == len(sent)
    for path in sent:
        instance = read_uids(path.read_bytes()).instance_id
        assert pydicom.dcmread(io.BytesIO(client_a.instance_file(instance))) == pydicom.dcmread(path)


def test_sigterm_stops_with_exit_0_and_the_run_stopped_with_its_items(workdir: Path) -> None:
    sent = instances(workdir / "sent", Shape(instances=3, pixels=16, seed=96))
    process = start_cli(
        "scp", "--to", "out", "--port", "0", "--bind", "127.0.0.1", cwd=workdir, log="scp.log"
    )
    log = workdir / "scp.log"
    try:
        wait_for(lambda: "listening as" in log.read_text(), "the SCP to listen", process)
        match = re.search(r"listening as (\S+) on ([\d.]+):(\d+), writing to out", log.read_text())
        assert match, log.read_text()
        aet, host, port = match.groups()
        done = subprocess.run(
            ["storescu", "-aec", aet, host, port, *map(str, sent)], capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert f"{len(sent)} instances received" in log.read_text()
    ledger = Ledger(f"sqlite:///{ledger_path(workdir)}")
    run = ledger.runs(1)[0]
    assert (run.operation, run.status, run.counts) == ("scp", "stopped", {"done": len(sent)})
    keys = {item.key for item in ledger.items(run.id, kind="received")}
    assert keys == {pydicom.dcmread(path).SOPInstanceUID for path in sent}


def test_a_port_in_use_is_one_clear_error_and_a_failed_run(workdir: Path) -> None:
    with (
        scp_in_thread(workdir, str(workdir / "out")) as scp,
        pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{scp.address[1]}: Address already"),
        scp_in_thread(workdir, str(workdir / "out2"), port=scp.address[1]),
    ):
        pass
    runs = Ledger(f"sqlite:///{workdir / 'ledger.db'}").runs(2)
    assert sorted(run.status for run in runs) == ["failed", "stopped"]


@contextmanager
def small_disk(folder: Path, size: str = "64k") -> Iterator[None]:
    """FOLDER on a filesystem of SIZE (a tmpfs: needs root)."""
    folder.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]).returncode
    ):
        pytest.skip("mounting a small filesystem needs root")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_answers_out_of_resources(workdir: Path) -> None:
    [large] = instances(workdir / "large", Shape(pixels=256, seed=97))  # 128 kB of pixels
    [small] = instances(workdir / "small", Shape(pixels=16, seed=98))
    out = workdir / "out"
    with small_disk(out), scp_in_thread(workdir, str(out)) as scp:
        full = storescu(scp, "-v", str(large))
        assert full.returncode != 0
        assert "Received Store Response (Refused: OutOfResources)" in full.stderr
        assert storescu(scp, str(small)).returncode == 0
        assert stored_path(out, small).exists() and not stored_path(out, large).exists()
        assert leftovers(out) == []  # the partial file is gone
    ledger = Ledger(f"sqlite:///{workdir / 'ledger.db'}")
    [failure] = ledger.items(ledger.runs(1)[0].id, status="failed")
    assert failure.result["status"] == "0xA700" and failure.last_error == "No space left on device"


def test_a_session_is_not_resumed_or_retried(workdir: Path) -> None:
    with scp_in_thread(workdir, str(workdir / "out")):
        pass
    for command in ("resume", "retry"):
        result = cli("--ledger", f"sqlite:///{workdir / 'ledger.db'}", command, "last", cwd=workdir)
        assert result.returncode == 2
        assert "is a storage SCP session (what it received); it is not resumed" in result.stderr
