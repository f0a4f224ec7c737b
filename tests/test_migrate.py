"""migrate: a date range of studies moved from a DICOM node (a real Orthanc acting as the old PACS) into
another Orthanc, day by day, by the Orthanc's own C-MOVE or by ours, each study counted on arrival."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc, free_port, start_orthanc
from pacsflow.synthetic import Shape, instance_bytes, instance_keys, make_instance
from tests.conftest import cli, latest_run
from tests.qr_peer import QRPeer

SHAPE = Shape(patients=3, studies=2, series=1, instances=3, pixels=16, seed=21)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[LocalOrthanc, LocalOrthanc]]:
    """An old PACS holding SHAPE, and an empty Orthanc it may send to: each knows the other."""
    pacs_port, main_port = free_port(), free_port()
    pacs = start_orthanc(
        tmp_path / "pacs", "pacs", aet="OLDPACS", dicom_port=pacs_port,
        modalities={"main": ["MAIN", "127.0.0.1", main_port]},
    )  # fmt: skip
    main = start_orthanc(
        tmp_path / "main", "main", aet="MAIN", dicom_port=main_port,
        modalities={"oldpacs": ["OLDPACS", "127.0.0.1", pacs_port]},
    )  # fmt: skip
    with Orthanc(pacs.server_config()) as client:
        for key in instance_keys(SHAPE):
            client.upload(instance_bytes(SHAPE, *key))
    yield pacs, main
    pacs.stop()
    main.stop()


def write_config(workdir: Path, pacs: LocalOrthanc, main: LocalOrthanc) -> None:
    (workdir / "pacsflow.toml").write_text(
        f"""
workers = 4

[servers.main]
url = "{main.url}"

[modalities.old]
aet = "{pacs.aet}"
host = "127.0.0.1"
port = {pacs.dicom_port}
"""
    )


def studies_by_date() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in range(SHAPE.patients):
        for st in range(SHAPE.studies):
            ds = make_instance(SHAPE, p, st, 0, 0)
            found.setdefault(str(ds.StudyDate), []).append(str(ds.StudyInstanceUID))
    return found


def _shifted(day: str, days: int) -> str:
    from datetime import date, timedelta

    moved = date(int(day[:4]), int(day[4:6]), int(day[6:])) + timedelta(days)
    return moved.strftime("%Y%m%d")


def held(main: LocalOrthanc) -> dict[str, int]:
    """StudyInstanceUID -> instances, as the Orthanc holds them."""
    with Orthanc(main.server_config()) as client:
        return {
            client.resource("studies", study)["MainDicomTags"]["StudyInstanceUID"]: len(
                client.instance_ids_of("studies", study)
            )
            for study in client.ids("studies")
        }


@pytest.mark.parametrize("via", ["orthanc", "dicom"])
def test_a_date_range_is_moved_day_by_day_and_a_rerun_moves_nothing(
    workdir: Path, pair: tuple[LocalOrthanc, LocalOrthanc], via: str
) -> None:
    pacs, main = pair
    write_config(workdir, pacs, main)
    by_date = studies_by_date()
    day = sorted(by_date)[len(by_date) // 2]
    first, last = _shifted(day, -1), _shifted(day, 1)  # three days around one study's
    args = ["migrate", "--from", "old", "--to", "main", "--from-date", first, "--to-date", last, "--via", via]
    result = cli(*args, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    wanted = {uid for date, uids in by_date.items() if first <= date <= last for uid in uids}
    assert held(main) == {uid: SHAPE.series * SHAPE.instances for uid in wanted}
    days = latest_run(workdir, kind="day")
    assert [item.payload["day"] for item in days] == [last, day, first]  # newest first
    assert f"3 days: {len(wanted)} stud" in result.stdout and "moved into main" in result.stdout

    again = cli(*args, cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    studies = latest_run(workdir, kind="study")
    assert len(studies) == len(wanted) and {item.last_error for item in studies} == {"already there"}


def test_an_orthanc_that_does_not_know_the_node_is_a_clear_error(
    workdir: Path, tmp_path: Path, pair: tuple[LocalOrthanc, LocalOrthanc]
) -> None:
    pacs, _ = pair
    stranger = start_orthanc(tmp_path / "stranger", "stranger", aet="STRANGER")
    try:
        write_config(workdir, pacs, stranger)
        args = [
            "migrate",
            "--from",
            "old",
            "--to",
            "main",
            "--from-date",
            "2000-01-01",
            "--to-date",
            "2000-01-02",
        ]
        result = cli(*args, cwd=workdir)
        assert result.returncode == 2
        assert f"has no DICOM modality OLDPACS@127.0.0.1:{pacs.dicom_port}" in result.stderr
    finally:
        stranger.stop()


def test_a_merged_patient_is_counted_by_its_study_uid_on_the_orthanc(workdir: Path, tmp_path: Path) -> None:
    """The node's C-FIND names another PatientID than its files (a merged patient): the study the
    Orthanc receives is found by its StudyInstanceUID, not reported incomplete."""
    shape = Shape(patients=1, studies=1, series=1, instances=2, pixels=8, seed=22)
    data = [make_instance(shape, *key) for key in instance_keys(shape)]
    main = start_orthanc(tmp_path / "main", "main", aet="MAIN", dicom_port=free_port())
    try:
        peer = QRPeer(data, answered_id="MERGED-1", destinations={"MAIN": ("127.0.0.1", main.dicom_port)})
        with peer:
            (workdir / "pacsflow.toml").write_text(
                f'[servers.main]\nurl = "{main.url}"\n[modalities.old]\naet = "QRPEER"\n'
                f'host = "127.0.0.1"\nport = {peer.port}\n'
            )
            day = str(data[0].StudyDate)
            args = ["migrate", "--from", "old", "--to", "main", "--from-date", day, "--to-date", day]
            result = cli(*args, "--via", "dicom", cwd=workdir)
        assert result.returncode == 0, result.stdout + result.stderr
        assert held(main) == {str(data[0].StudyInstanceUID): 2}
        (study,) = latest_run(workdir, kind="study")
        assert study.status == "done" and study.result == {"expected": 2, "present": 2}
    finally:
        main.stop()
