"""compare two real Orthancs at study, series and instance level; --transfer-missing makes them equal."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc, free_port
from tests.conftest import cli, run_cli


def seed_difference(workdir: Path, client_a: Orthanc, client_b: Orthanc) -> None:
    """A: 2 patients x 2 series x 3 instances. B: one instance of A less, plus a study of its own."""
    cli("populate", "--to", "a", "--patients", "2", "--series", "2", "--instances", "3", cwd=workdir)
    cli("populate", "--to", "b", "--patients", "1", "--instances", "1", "--seed", "77", cwd=workdir)
    for instance in client_a.ids("instances")[:-1]:
        client_b.upload(client_a.instance_file(instance))


def test_compare_levels_and_csv(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    seed_difference(workdir, client_a, client_b)
    study = run_cli("compare", "a", "b", "--out", "diff.csv", cwd=workdir)
    assert study.returncode == 1
    assert "studies: A has 2, B has 3; only in A 0, only in B 1, instance counts differ 1" in study.stdout
    rows = list(csv.DictReader((workdir / "diff.csv").open()))
    assert sorted(row["where"] for row in rows) == ["count-differs", "only-b"]
    assert (workdir / "diff.csv").stat().st_mode & 0o777 == 0o600
    series = run_cli("compare", "a", "b", "--level", "series", cwd=workdir)
    assert "series: A has 4, B has 5; only in A 0, only in B 1, instance counts differ 1" in series.stdout
    instance = run_cli("compare", "a", "b", "--level", "instance", cwd=workdir)
    assert (
        "instances: A has 12, B has 12; only in A 1, only in B 1, instance counts differ 0" in instance.stdout
    )


def test_transfer_missing_makes_b_hold_all_of_a(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    seed_difference(workdir, client_a, client_b)
    result = run_cli("compare", "a", "b", "--level", "instance", "--transfer-missing", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "instances copied 1" in result.stdout
    assert set(client_a.ids("instances")) <= set(client_b.ids("instances"))
    same = run_cli("compare", "a", "b", "--query", "PatientID=PF000-*", cwd=workdir)
    assert same.returncode == 0 and "only in A 0, only in B 0, instance counts differ 0" in same.stdout


def test_compare_with_a_wrong_password(workdir: Path, config_file: Path, orthanc_a: LocalOrthanc) -> None:
    result = run_cli("compare", f"http://alice:nope@127.0.0.1:{orthanc_a.http_port}", "b", cwd=workdir)
    assert result.returncode == 2 and "refused user 'alice' with the password given" in result.stderr


def test_dates_in_either_form_and_a_comparison_of_nothing_is_not_a_match(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    empty = cli("compare", "a", "b", cwd=workdir)
    assert empty.returncode == 1, empty.stdout + empty.stderr
    assert "studies: none on either side; nothing was compared" in empty.stdout
    cli("populate", "--to", "a", "--patients", "2", "--instances", "1", cwd=workdir)
    dates = sorted(study["MainDicomTags"]["StudyDate"] for study in client_a.find("Study", {}, expand=True))
    first = f"{dates[0][:4]}-{dates[0][4:6]}-{dates[0][6:]}"  # YYYY-MM-DD, as people write it
    dashed = cli("compare", "a", "b", "--from-date", first, cwd=workdir)
    assert dashed.returncode == 1 and "studies: A has 2, B has 0; only in A 2" in dashed.stdout
    last = cli("compare", "a", "b", "--from-date", dates[-1], "--to-date", dates[-1], cwd=workdir)
    assert f"studies: A has {dates.count(dates[-1])}, B has 0" in last.stdout
    before = cli("compare", "a", "b", "--from-date", "1900-01-01", "--to-date", "1900-12-31", cwd=workdir)
    assert before.returncode == 1
    assert "studies: none match the query and dates on either side; nothing was compared" in before.stdout
    bad = cli("compare", "a", "b", "--from-date", "2020-13-01", cwd=workdir)
    assert bad.returncode == 2 and "--from-date '2020-13-01': no such date" in bad.stderr
    both = cli("compare", "a", "b", "--to-date", "20201231", "--query", "StudyDate=20200101-", cwd=workdir)
    assert both.returncode == 2 and "not both" in both.stderr


def test_the_csv_names_each_difference_by_its_dicom_identities(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    seed_difference(workdir, client_a, client_b)
    out = workdir / "diff.csv"
    out.write_text("old\n")
    out.chmod(0o644)
    assert run_cli("compare", "a", "b", "--out", "diff.csv", cwd=workdir).returncode == 1
    assert out.stat().st_mode & 0o777 == 0o600  # it names patients, whatever the file was before
    rows = {row["where"]: row for row in csv.DictReader(out.open())}
    for where, client in (("count-differs", client_a), ("only-b", client_b)):
        study = client.resource("studies", rows[where]["orthanc_id"])
        tags = {**study["MainDicomTags"], **study["PatientMainDicomTags"]}
        for tag in ("PatientID", "StudyInstanceUID", "StudyDate", "StudyDescription"):
            assert rows[where][tag] == tags[tag] != ""
    run_cli("compare", "a", "b", "--level", "series", "--out", "series.csv", cwd=workdir)
    rows = {row["where"]: row for row in csv.DictReader((workdir / "series.csv").open())}
    series = client_b.resource("series", rows["only-b"]["orthanc_id"])
    study = client_b.resource("studies", series["ParentStudy"])
    assert rows["only-b"]["StudyInstanceUID"] == study["MainDicomTags"]["StudyInstanceUID"]
    for tag in ("SeriesInstanceUID", "Modality", "SeriesDescription"):
        assert rows["only-b"][tag] == series["MainDicomTags"][tag] != ""
    # a DICOM node's side: what its C-FIND answered (orthanc-a is A's own DICOM port)
    run_cli("compare", "b", "orthanc-a", "--level", "instance", "--out", "node.csv", cwd=workdir)
    (row,) = [row for row in csv.DictReader((workdir / "node.csv").open()) if row["where"] == "only-b"]
    instance = client_a.resource("instances", row["orthanc_id"])
    parent = client_a.get_json(f"/instances/{row['orthanc_id']}/study")
    assert row["SOPInstanceUID"] == instance["MainDicomTags"]["SOPInstanceUID"]
    assert row["PatientID"] == parent["PatientMainDicomTags"]["PatientID"]
    assert row["StudyDate"] == parent["MainDicomTags"]["StudyDate"]


def test_a_node_that_answers_our_c_find_with_a_refusal_is_named_with_the_likely_cause(
    workdir: Path, config_file: Path
) -> None:
    """A node other than Orthanc refuses with a failure status (here 0xA700) where Orthanc aborts."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

    def refuse(_event: evt.Event) -> Iterator[tuple[int, None]]:
        yield 0xA700, None

    ae = AE(ae_title="STRICT")
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, refuse)])
    try:
        result = cli("compare", "b", f"STRICT@127.0.0.1:{port}", cwd=workdir)
    finally:
        server.shutdown()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "answers C-ECHO but refuses our C-FIND (status 0xA700): it likely does not know our AE title" in (
        result.stderr
    )
