"""populate: deterministic synthetic studies into a folder or a server; broken files for tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, instance_bytes, instance_keys, make_instance, write_bad_files
from tests.conftest import run_cli


def test_same_seed_same_bytes_other_seed_other_uids() -> None:
    shape = Shape(2, 2, 2, 2, pixels=32, seed=7)
    assert instance_bytes(shape, 1, 1, 1, 1) == instance_bytes(shape, 1, 1, 1, 1)
    other = Shape(2, 2, 2, 2, pixels=32, seed=8)
    assert make_instance(shape, 0, 0, 0, 0).SOPInstanceUID != make_instance(other, 0, 0, 0, 0).SOPInstanceUID


def test_headers_are_realistic() -> None:
    shape = Shape(4, 2, 1, 1, pixels=16, seed=0)
    datasets = [make_instance(shape, p, st, 0, 0) for p in range(4) for st in range(2)]
    assert {ds.Modality for ds in datasets} == {"CT", "MR", "CR", "DX"}
    assert any(not str(ds.PatientName).isascii() for ds in datasets)
    for ds in datasets:
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert len(ds.StudyDate) == 8 and ds.PatientBirthDate < ds.StudyDate
        assert ds.Rows == 16 and len(ds.PixelData) == 16 * 16 * 2
        assert all(len(uid) <= 64 for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))


def test_bad_files_are_bad(tmp_path: Path) -> None:
    files = write_bad_files(tmp_path)
    assert files["empty"].stat().st_size == 0
    assert files["not_dicom"].read_bytes()[128:132] != b"DICM"
    assert files["truncated_header"].stat().st_size == 200


def test_populate_out_writes_a_tree(workdir: Path) -> None:
    result = run_cli(
        "populate",
        "--out",
        "data",
        "--patients",
        "2",
        "--studies",
        "2",
        "--series",
        "2",
        "--instances",
        "3",
        "--pixels",
        "32",
        "--seed",
        "3",
        "--bad-files",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    files = sorted((workdir / "data").glob("PF*/**/*.dcm"))
    assert len(files) == 24
    assert len({dcmread(f).SOPInstanceUID for f in files}) == 24
    assert {p.name for p in (workdir / "data" / "bad").iterdir()} >= {"empty.dcm", "not_dicom.dcm"}
    assert "generated 24 instances" in result.stdout


def test_populate_to_server_and_again_is_all_skipped(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    args = ("populate", "--to", "a", "--patients", "3", "--studies", "1", "--series", "2", "--instances", "4")
    first = run_cli(*args, cwd=workdir)
    assert first.returncode == 0, first.stderr
    stats = client_a.statistics()
    assert (stats["CountPatients"], stats["CountSeries"], stats["CountInstances"]) == (3, 6, 24)
    second = run_cli(*args, cwd=workdir)
    assert second.returncode == 0, second.stderr
    assert "24 skipped" in second.stdout and "done" in second.stdout
    assert client_a.statistics()["CountInstances"] == 24


def test_populate_to_url_with_credentials(workdir: Path, orthanc_a: LocalOrthanc, client_a: Orthanc) -> None:
    result = run_cli("populate", "--to", orthanc_a.url_with_credentials, "--instances", "2", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert client_a.statistics()["CountInstances"] == 2
    assert orthanc_a.password not in result.stdout + result.stderr


@pytest.fixture
def refuses_series_2(tmp_path: Path) -> Iterator[LocalOrthanc]:
    """An Orthanc whose Lua filter refuses series number 2: Orthanc 1.10 answers such a POST with HTTP 200
    and Status FilteredOut."""
    script = tmp_path / "refuse.lua"
    script.write_text(
        "function ReceivedInstanceFilter(dicom, origin, info)\n  return dicom.SeriesNumber ~= '2'\nend\n"
    )
    server = LocalOrthanc("R", tmp_path / "orthanc-r", extra={"LuaScripts": [str(script)]}).start()
    yield server
    server.kill()


def test_populate_into_a_server_that_refuses_fails_those_items(
    workdir: Path, refuses_series_2: LocalOrthanc
) -> None:
    args = ("populate", "--to", refuses_series_2.url, "--series", "2", "--instances", "3", "--pixels", "16")
    result = run_cli(*args, cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 done, 3 failed" in result.stdout
    shown = run_cli("run", "show", "last", "--failed", cwd=workdir).stdout
    assert shown.count(": refused by the server (FilteredOut)") == 3
    with Orthanc(refuses_series_2.server_config()) as client:
        assert client.statistics()["CountInstances"] == 3


def test_generated_uids_are_unique_whatever_the_indices() -> None:
    """(patient 1, series 0, instance 10) and (patient 10, series 1, instance 0) once shared a UID:
    pydicom joins entropy sources without a separator."""
    shape = Shape(patients=11, series=2, instances=11, pixels=8)
    datasets = [make_instance(shape, *key) for key in instance_keys(shape)]
    assert len({str(ds.SOPInstanceUID) for ds in datasets}) == shape.total
    assert len({str(ds.SeriesInstanceUID) for ds in datasets}) == 11 * 2
