"""compare two real Orthancs at study, series and instance level; --transfer-missing makes them equal."""

from __future__ import annotations

import csv
from pathlib import Path

from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
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
    assert result.returncode == 2 and "wrong user or password" in result.stderr
