"""inventory and validate: one CSV row per series (from a server or a download run), each series' count
checked against the count Orthanc expects, on a real Orthanc 1.10."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from pacsflow.inventory import COLUMNS, series_rows_from_run
from pacsflow.ledger import DONE, SKIPPED, Ledger, PlannedItem
from pacsflow.orthanc import Orthanc, orthanc_id
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, encode, make_instance
from tests.conftest import cli, ledger_path

SHAPE = Shape(patients=2, studies=1, series=2, instances=3, pixels=8, seed=41)
#: Orthanc 1.10 computes a series' expected count from the first instance it stores: ImagesInAcquisition
#: times NumberOfTemporalPositions (ImagesInAcquisition alone gives none), or CardiacNumberOfImages
EXPECT_3 = {"ImagesInAcquisition": 3, "NumberOfTemporalPositions": 1}
EXPECT_4 = {"ImagesInAcquisition": 4, "NumberOfTemporalPositions": 1}


def upload(client: Orthanc, p: int, se: int, numbers: list[int], **tags: Any) -> dict[str, Any]:
    """Instances of SHAPE's patient P, series SE, with these InstanceNumbers and TAGS, on CLIENT; the
    series' identities and the bytes sent."""
    size = 0
    for i, number in enumerate(numbers):
        ds = make_instance(SHAPE, p, 0, se, i)
        ds.InstanceNumber = number
        for name, value in tags.items():
            setattr(ds, name, value)
        data = encode(ds)
        client.upload(data)
        size += len(data)
    return {
        "PatientID": ds.PatientID,
        "PatientName": str(ds.PatientName),
        "StudyInstanceUID": ds.StudyInstanceUID,
        "StudyDate": ds.StudyDate,
        "StudyDescription": ds.StudyDescription,
        "AccessionNumber": ds.AccessionNumber,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SeriesNumber": str(ds.SeriesNumber),
        "Modality": ds.Modality,
        "SeriesDescription": ds.SeriesDescription,
        "size": size,
        "orthanc_study": orthanc_id(ds.PatientID, ds.StudyInstanceUID),
        "orthanc_series": orthanc_id(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID),
    }


@pytest.fixture
def small(client_a: Orthanc) -> dict[str, dict[str, Any]]:
    """2 patients, 3 series on server a: complete (3 of 3), incomplete (2 of 4), unknown (no count)."""
    return {
        "complete": upload(client_a, 0, 0, [1, 2, 3], **EXPECT_3),
        "incomplete": upload(client_a, 0, 1, [1, 2], **EXPECT_4),
        "unknown": upload(client_a, 1, 0, [1, 2, 3]),
    }


def read_csv(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The header, and the rows by SeriesInstanceUID."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    return header, {
        row[header.index("SeriesInstanceUID")]: dict(zip(header, row, strict=True)) for row in rows[1:]
    }


def test_inventory_of_a_server_has_a_row_per_series(
    workdir: Path, config_file: Path, orthanc_a: LocalOrthanc, small: dict[str, dict[str, Any]]
) -> None:
    result = cli("inventory", "--from", "a", "--out", "inventory.csv", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"3 series of 2 studies from server a ({orthanc_a.url}): 1 complete, 1 incomplete, 1 unknown\n"
        "written to inventory.csv\n"
    )
    path = workdir / "inventory.csv"
    assert path.stat().st_mode & 0o777 == 0o600  # it names patients
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".inventory")] == []  # no temporary left
    header, rows = read_csv(path)
    assert header == list(COLUMNS)
    assert len(rows) == 3
    counts = {"complete": ("3", "3"), "incomplete": ("4", "2"), "unknown": ("", "3")}
    for status, series in small.items():
        row = rows[series["SeriesInstanceUID"]]
        expected, present = counts[status]
        assert row == {
            **{name: series[name] for name in COLUMNS[:10]},
            "expected_instances": expected,
            "present_instances": present,
            "size_bytes": str(series["size"]),  # the files' bytes, as sent
            "status": status,
            "orthanc_study": series["orthanc_study"],
            "orthanc_series": series["orthanc_series"],
        }
    assert rows[small["unknown"]["SeriesInstanceUID"]]["PatientName"] == "Núñez^José"  # UTF-8 kept
    # rows sorted by patient, study, then series number
    assert list(rows) == [small[name]["SeriesInstanceUID"] for name in ("complete", "incomplete", "unknown")]


def test_inventory_takes_the_selectors_of_transfer(
    workdir: Path, config_file: Path, small: dict[str, dict[str, Any]]
) -> None:
    patient = small["unknown"]["PatientID"]
    result = cli("inventory", "--from", "a", "--out", "one.csv", "--patient", patient, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert list(read_csv(workdir / "one.csv")[1]) == [small["unknown"]["SeriesInstanceUID"]]
    result = cli(
        "inventory", "--from", "a", "--out", "ct.csv", "--query", "Modality=CT", "-w", "1", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    assert len(read_csv(workdir / "ct.csv")[1]) == 2  # patient 0's study is CT, patient 1's MR
    both = cli(
        "inventory", "--from", "a", "--out", "x.csv", "--patient", patient, "--query", "A=1", cwd=workdir
    )
    assert both.returncode == 2 and not (workdir / "x.csv").exists()


def test_validate_reports_an_incomplete_series_and_records_it(
    workdir: Path, config_file: Path, small: dict[str, dict[str, Any]]
) -> None:
    result = cli("validate", "--on", "a", cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    incomplete = small["incomplete"]
    line = f"  study {incomplete['StudyInstanceUID']} series 2 CT 'series 2': 2 of 4 instances (2 missing)\n"
    summary = "  3 series checked: 1 complete, 1 incomplete, 1 unknown\n"
    assert result.stdout.endswith(line + summary), result.stdout
    assert result.stdout.startswith("run ") and "series: 1 done, 1 skipped, 1 failed" in result.stdout
    for series in small.values():  # no patient data without --log-phi
        assert series["PatientID"] not in result.stdout + result.stderr
        assert series["PatientName"].split("^")[0] not in result.stdout + result.stderr
    shown = cli("run", "show", "last", "--failed", cwd=workdir)
    assert "failed items (1):" in shown.stdout
    assert f"study {incomplete['StudyInstanceUID']} series 2 CT 'series 2': 2 of 4" in shown.stdout
    with_phi = cli("validate", "--on", "a", "--log-phi", cwd=workdir)
    assert with_phi.returncode == 1
    assert f"  patient {incomplete['PatientID']} ({incomplete['PatientName']}) study " in with_phi.stdout
    inventory = cli("inventory", "--from", "a", "--out", "inventory.csv", cwd=workdir)
    assert inventory.returncode == 0  # a report: the status column says it
    assert read_csv(workdir / "inventory.csv")[1][incomplete["SeriesInstanceUID"]]["status"] == "incomplete"


def test_retry_looks_again_at_a_series_whose_instances_arrived(
    workdir: Path, config_file: Path, client_a: Orthanc, small: dict[str, dict[str, Any]]
) -> None:
    assert cli("validate", "--on", "a", cwd=workdir).returncode == 1
    upload(client_a, 0, 1, [1, 2, 3, 4], **EXPECT_4)  # the two missing ones arrive (and two again)
    again = cli("retry", "last", cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "  3 series checked: 2 complete, 0 incomplete, 1 unknown\n" in again.stdout


def test_a_complete_server_passes_and_unknown_counts_are_no_failure(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    upload(client_a, 0, 0, [1, 2, 3], **EXPECT_3)
    upload(client_a, 0, 1, [1, 2], CardiacNumberOfImages=2)
    upload(client_a, 1, 0, [1, 2, 3])
    result = cli("validate", "--on", "a", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith("\n  3 series checked: 2 complete, 0 incomplete, 1 unknown\n"), (
        result.stdout
    )
    assert "series: 2 done, 1 skipped" in result.stdout


def test_validate_finds_extra_and_misnumbered_instances(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    misnumbered = upload(client_a, 0, 0, [1, 5], CardiacNumberOfImages=2)
    extra = upload(client_a, 0, 1, [1, 2, 3], CardiacNumberOfImages=2)
    result = cli("validate", "--on", "a", cwd=workdir)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert (
        f"  study {misnumbered['StudyInstanceUID']} series 1 CT 'series 1': 2 of 2 instances, but their "
        "numbers do not run from 1 to 2 (Orthanc: Inconsistent)"
    ) in lines
    assert (
        f"  study {extra['StudyInstanceUID']} series 2 CT 'series 2': 3 instances where 2 were expected"
        in lines
    )
    assert lines[-1] == "  2 series checked: 0 complete, 0 incomplete, 1 extra, 1 inconsistent, 0 unknown"
    inventory = cli("inventory", "--from", "a", "--out", "inventory.csv", cwd=workdir)
    assert inventory.returncode == 0
    rows = read_csv(workdir / "inventory.csv")[1]
    assert rows[extra["SeriesInstanceUID"]]["status"] == "extra"
    assert rows[misnumbered["SeriesInstanceUID"]]["status"] == "complete"  # the counts agree


def test_validate_of_one_patient(workdir: Path, config_file: Path, small: dict[str, dict[str, Any]]) -> None:
    result = cli("validate", "--on", "a", "--patient", small["unknown"]["PatientID"], cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith("  1 series checked: 0 complete, 0 incomplete, 1 unknown\n")


# -- from a download run: the ledger filled by hand, as the download operation will fill it ---------


def series_record(n: int, *, expected: int | None, listed: int) -> dict[str, Any]:
    """One series as a download run's study item records it."""
    return {
        "id": f"series-{n}",
        "SeriesInstanceUID": f"1.2.3.{n}",
        "SeriesNumber": str(n),
        "SeriesDescription": f"series {n}",
        "Modality": "CT",
        "expected": expected,
        "listed": listed,
        "study": "study-1",
        "StudyInstanceUID": "1.2.3",
        "StudyDate": "20240102",
        "StudyDescription": "chest",
        "AccessionNumber": "A1",
        "PatientID": "PF-1",
        "PatientName": "Doe^Jane",
    }


def fill_download_run(ledger: Ledger) -> str:
    """A download run of one study with three series: 1 all there (one instance skipped as already on
    disk), 2 with one instance failed and one not done yet, 3 whose expected count Orthanc did not know
    (the listed count stands in)."""
    run = ledger.create_run("download", {"from": "a", "out": "/export"})
    ledger.add_items(run, [PlannedItem("study", "s/study-1", {"study": "study-1"})])
    (study,) = ledger.claim(run, "w", 1, 60)
    records = [series_record(1, expected=2, listed=2), series_record(2, expected=4, listed=3)]
    records.append(series_record(3, expected=None, listed=2))
    instances = {1: [DONE, SKIPPED], 2: [DONE, "failed", "pending"], 3: [DONE, DONE]}
    children = [
        PlannedItem("instance", f"i/{n}-{i}", {"id": f"{n}-{i}", "series": f"series-{n}"}, phase=1)
        for n, statuses in instances.items()
        for i in range(len(statuses))
    ]
    assert ledger.complete(study, "w", result={"series": records}, children=children)
    for item in ledger.claim(run, "w", 100, 60):
        n, i = (int(part) for part in item.payload["id"].split("-"))
        status = instances[n][i]
        if status == "failed":
            ledger.fail(item, "w", "disk full")
        elif status != "pending":
            ledger.complete(item, "w", status=status, nbytes=1000 * n + i)
    return run


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_rows_from_a_download_run(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (
        request.getfixturevalue("postgres_url") if database == "postgresql" else f"sqlite:///{tmp_path}/l.db"
    )
    ledger = Ledger(url)
    run = fill_download_run(ledger)
    rows = series_rows_from_run(ledger, run)
    assert [
        (r.SeriesNumber, r.expected_instances, r.present_instances, r.size_bytes, r.status) for r in rows
    ] == [
        ("1", 2, 2, 1000 + 1001, "complete"),
        ("2", 4, 1, 2000, "incomplete"),
        ("3", 2, 2, 3000 + 3001, "complete"),  # the listed count stands in
    ]
    assert rows[0].cells() == [
        "PF-1", "Doe^Jane", "1.2.3", "20240102", "chest", "A1", "1.2.3.1", "1", "CT", "series 1",
        2, 2, 2001, "complete", "study-1", "series-1",
    ]  # fmt: skip
    other = ledger.create_run("transfer", {"from": "a", "to": "b"})
    assert series_rows_from_run(ledger, other) == []
    ledger.close()


def test_inventory_from_a_run(workdir: Path) -> None:
    path = ledger_path(workdir)  # no config file: the user's data folder
    ledger = Ledger(f"sqlite:///{path}")
    run = fill_download_run(ledger)
    ledger.close()
    result = cli("inventory", "--from", run[:11], "--out", "run.csv", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"3 series of 1 study from run {run}: 2 complete, 1 incomplete, 0 unknown\nwritten to run.csv\n"
    )
    assert (workdir / "run.csv").stat().st_mode & 0o777 == 0o600
    header, rows = read_csv(workdir / "run.csv")
    assert header == list(COLUMNS)
    assert rows["1.2.3.2"]["expected_instances"] == "4" and rows["1.2.3.2"]["present_instances"] == "1"
    assert rows["1.2.3.2"]["status"] == "incomplete" and rows["1.2.3.2"]["PatientID"] == "PF-1"
    picked = cli("inventory", "--from", "last", "--out", "x.csv", "--patient", "PF-1", cwd=workdir)
    assert picked.returncode == 2
    assert "choose studies on a server: not with a run" in picked.stderr


def test_a_run_without_series_and_unknown_names_are_one_clear_line(workdir: Path, config_file: Path) -> None:
    missing = cli("inventory", "--from", "nosuch", "--out", "x.csv", cwd=workdir)
    assert missing.returncode == 2 and missing.stdout == ""
    (line,) = missing.stderr.splitlines()
    assert line.startswith(
        "pacsflow: error: --from 'nosuch' is neither a server (known: a, b; or give a URL) nor a run "
        f"(there is no ledger at {workdir / '.pacsflow' / 'ledger.db'} yet"
    )
    ledger = Ledger(f"sqlite:///{ledger_path(workdir)}")
    transfer = ledger.create_run("transfer", {"from": "a", "to": "b"})
    ledger.close()
    typo = cli("inventory", "--from", "aa", "--out", "x.csv", cwd=workdir)
    assert typo.returncode == 2
    assert typo.stderr.startswith("pacsflow: error: --from 'aa' is neither a server (did you mean 'a'?)")
    assert typo.stderr.rstrip().endswith(
        f"nor a run (no run 'aa' in ledger sqlite:///{ledger_path(workdir)})"
    )
    not_download = cli("inventory", "--from", transfer, "--out", "x.csv", cwd=workdir)
    assert not_download.returncode == 2
    assert not_download.stderr == (
        f"pacsflow: error: run {transfer} (transfer) has recorded no series: `inventory --from RUN` "
        "reads a download or retrieve run whose studies were listed\n"
    )
    unknown_server = cli("validate", "--on", "nosuch", cwd=workdir)
    assert unknown_server.returncode == 2 and len(unknown_server.stderr.splitlines()) == 1
    assert unknown_server.stderr.startswith("pacsflow: error: unknown server 'nosuch'")
    down = cli("inventory", "--from", "http://127.0.0.1:1", "--out", "x.csv", cwd=workdir)
    assert down.returncode == 2 and len(down.stderr.splitlines()) == 1, down.stderr
    assert down.stderr.startswith("pacsflow: error: cannot reach")
    assert not (workdir / "x.csv").exists()
    nowhere = cli("inventory", "--from", "a", "--out", "no/such/x.csv", cwd=workdir)
    assert nowhere.returncode == 2 and "there is no folder" in nowhere.stderr


def test_help_shows_examples(workdir: Path) -> None:
    for command in ("inventory", "validate"):
        result = cli(command, "--help", cwd=workdir)
        assert result.returncode == 0 and "\n  Example: pacsflow " in result.stdout
