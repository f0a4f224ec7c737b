"""download: reruns check each file against the server's size and MD5; every attempt writes its own file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from pacsflow.config import Settings
from pacsflow.engine import EXIT_FAILED, EXIT_OK, Engine
from pacsflow.errors import TransientError
from pacsflow.ledger import FAILED, Ledger
from pacsflow.ops.download import Download
from pacsflow.orthanc import Orthanc
from pacsflow.pacing import RetryPolicy
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, instance_bytes
from tests.conftest import cli, run_cli

SHAPE = Shape(patients=1, series=1, instances=3, pixels=32, seed=41)


def fill(client: Orthanc) -> list[str]:
    """Three instances on the server; their IDs in instance order."""
    return [client.upload(instance_bytes(SHAPE, 0, 0, 0, i))["ID"] for i in range(SHAPE.instances)]


def downloaded(out: Path, client: Orthanc) -> dict[str, Path]:
    """The files under OUT by Orthanc instance ID (their names end with the SOPInstanceUID)."""
    by_uid = {path.stem.split("_", 1)[1]: path for path in out.rglob("*.dcm")}
    found = {}
    for instance in client.ids("instances"):
        uid = client.resource("instances", instance)["MainDicomTags"]["SOPInstanceUID"]
        if uid in by_uid:
            found[instance] = by_uid[uid]
    return found


def leftovers(out: Path) -> list[Path]:
    return [path for path in out.rglob("*") if path.is_file() and path.suffix != ".dcm"]


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a pixel: same size, other content
    path.write_bytes(bytes(data))


def test_rerun_fetches_truncated_and_altered_files_again_and_skips_whole_ones(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    truncated, altered, whole = fill(client_a)
    first = run_cli("download", "--from", "a", "--out", "dl", cwd=workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    files = downloaded(workdir / "dl", client_a)
    files[truncated].write_bytes(files[truncated].read_bytes()[:-100])
    flip_last_byte(files[altered])
    untouched = files[whole].stat()
    again = run_cli("download", "--from", "a", "--out", "dl", cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    # the study, the two damaged files and the study's check; the whole file skipped
    assert "4 done, 1 skipped" in again.stdout
    for instance in (truncated, altered, whole):
        assert files[instance].read_bytes() == client_a.instance_file(instance)
    assert files[whole].stat().st_mtime_ns == untouched.st_mtime_ns  # not written again
    assert leftovers(workdir / "dl") == []


@pytest.fixture
def without_md5(tmp_path: Path) -> Iterator[LocalOrthanc]:
    """An Orthanc that stores no MD5 of its files (`GET .../md5` answers 404)."""
    server = LocalOrthanc("M", tmp_path / "orthanc-m", extra={"StoreMD5ForAttachments": False}).start()
    yield server
    server.kill()


def test_rerun_on_a_server_without_md5_checks_the_size(workdir: Path, without_md5: LocalOrthanc) -> None:
    with Orthanc(without_md5.server_config()) as client:
        truncated, altered, _ = fill(client)
        assert run_cli("download", "--from", without_md5.url, "--out", "dl", cwd=workdir).returncode == 0
        files = downloaded(workdir / "dl", client)
        files[truncated].write_bytes(files[truncated].read_bytes()[:-100])
        flip_last_byte(files[altered])
        again = run_cli("download", "--from", without_md5.url, "--out", "dl", cwd=workdir)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "3 done, 2 skipped" in again.stdout  # without an MD5, same size is all it can tell
        assert files[truncated].read_bytes() == client.instance_file(truncated)
        assert files[altered].read_bytes() != client.instance_file(altered)


class Flaky:
    """Wraps stream_instance_file: records each attempt's file name; the first attempt per instance breaks
    off after a few bytes (a dropped connection), or with SHORT every attempt ends early without an error."""

    def __init__(self, real: object, *, short: bool = False) -> None:
        self.real = real
        self.short = short
        self.names: dict[str, list[str]] = {}

    def __call__(self, instance: str, out: IO[bytes], chunk_size: int = 1 << 20) -> int:
        self.names.setdefault(instance, []).append(out.name)
        if self.short:
            out.write(b"DICM")
            return 4
        if len(self.names[instance]) == 1:
            out.write(b"partial")
            raise TransientError("connection dropped mid-file")
        return self.real(instance, out, chunk_size)  # type: ignore[operator]


def run_download(settings: Settings, out: Path, *, short: bool = False) -> tuple[int, Flaky]:
    op = Download(settings, {"from": "a", "out": str(out), "studies": None})
    flaky = Flaky(op.source.stream_instance_file, short=short)
    op.source.stream_instance_file = flaky  # type: ignore[method-assign]
    engine = Engine(Ledger(settings.ledger), settings, retry=RetryPolicy(max_attempts=3, base=0.01, cap=0.05))
    return engine.start(op).exit_code, flaky


def test_each_attempt_writes_its_own_temporary_file(
    workdir: Path, settings: Settings, client_a: Orthanc
) -> None:
    instances = fill(client_a)
    out = workdir / "dl"
    exit_code, flaky = run_download(settings, out)
    assert exit_code == EXIT_OK
    files = downloaded(out, client_a)
    for instance in instances:
        first, second = flaky.names[instance]
        assert first != second  # after a lease takeover, two workers never share one file
        for name in (first, second):
            assert Path(name).parent == files[instance].parent
            assert re.fullmatch(re.escape(f"{files[instance].name}.") + r"[0-9a-f]+\.part", Path(name).name)
        assert files[instance].read_bytes() == client_a.instance_file(instance)
    assert leftovers(out) == []  # the broken attempts' files are gone


def test_a_file_shorter_than_the_server_says_is_never_kept(
    workdir: Path, settings: Settings, client_a: Orthanc
) -> None:
    instance = client_a.upload(instance_bytes(SHAPE, 0, 0, 0, 0))["ID"]
    out = workdir / "dl"
    exit_code, flaky = run_download(settings, out, short=True)
    assert exit_code == EXIT_FAILED
    assert downloaded(out, client_a) == {} and leftovers(out) == []
    assert len(flaky.names[instance]) == 3  # a short file is a transient fault: tried again, then failed
    ledger = Ledger(settings.ledger)
    (failed,) = ledger.items(ledger.runs()[0].id, status=FAILED, kind="instance")
    size = len(client_a.instance_file(instance))
    assert failed.last_error == f"{instance}: got 4 bytes, the server holds {size}"


def test_download_chooses_studies_by_uid_patient_accession_or_query(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    cli("populate", "--to", "a", "--patients", "3", "--instances", "2", "--seed", "9", cwd=workdir)
    studies = {
        info["ID"]: {**info["MainDicomTags"], **info["PatientMainDicomTags"]}
        for info in client_a.find("Study", {}, expand=True)
    }
    first, second, third = sorted(studies, key=lambda study: studies[study]["PatientID"])

    def fetched(*selectors: str) -> set[str]:
        """The studies a download with SELECTORS wrote files of (by the StudyInstanceUID folders)."""
        out = workdir / f"dl-{len(list(workdir.glob('dl-*')))}"
        result = run_cli("download", "--from", "a", "--out", str(out), *selectors, cwd=workdir)
        assert result.returncode == 0, result.stdout + result.stderr
        folders = {path.parent.parent.name.rsplit("_", 1)[1] for path in out.rglob("*.dcm")}
        return {study for study, tags in studies.items() if tags["StudyInstanceUID"] in folders}

    assert fetched("--study", studies[first]["StudyInstanceUID"]) == {first}
    patient_and_accession = ["--patient", studies[second]["PatientID"]]
    patient_and_accession += ["--accession", studies[third]["AccessionNumber"]]
    assert fetched(*patient_and_accession) == {second, third}
    day = studies[third]["StudyDate"]
    assert fetched("--query", f"StudyDate={day[:4]}-{day[4:6]}-{day[6:]}") == {
        study for study, tags in studies.items() if tags["StudyDate"] == day
    }
    # a series tag asked of studies: the studies that have such a series (ModalitiesInStudy)
    modality = studies[first]["StudyDescription"].split()[0]
    assert (
        fetched("--query", f"Modality={modality}")
        == {study for study, tags in studies.items() if tags["StudyDescription"].startswith(f"{modality} ")}
        != set()
    )
    nothing = cli("download", "--from", "a", "--out", "none", "--accession", "A-NONE", cwd=workdir)
    assert nothing.returncode == 2 and "--accession matches no study on a" in nothing.stderr
    assert not (workdir / "none").exists()  # refused before the folder was made
