"""delete: shows what goes, asks or needs --yes, deletes exactly the selection, records each study."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest

from pacsflow.config import Settings
from pacsflow.engine import EXIT_FAILED, EXIT_OK, Engine
from pacsflow.errors import TransientError
from pacsflow.ledger import DONE, FAILED, Ledger, PlannedItem
from pacsflow.ops.delete import Delete
from pacsflow.orthanc import Capabilities, Orthanc
from pacsflow.synthetic import Shape, instance_bytes, patient_id
from tests.conftest import PACSFLOW, cli, latest_run

# two patients with two studies each; each study one series of two instances
SHAPE = Shape(patients=2, studies=2, series=1, instances=2, pixels=16, seed=61)
UNKNOWN = "00000000-11111111-22222222-33333333-44444444"


def fill(client: Orthanc) -> dict[tuple[int, int], str]:
    """The SHAPE's studies on the server: (patient, study) -> Orthanc study ID."""
    studies = {}
    for p, st, se, i in ((p, st, 0, i) for p in range(2) for st in range(2) for i in range(2)):
        studies[p, st] = client.upload(instance_bytes(SHAPE, p, st, se, i))["ParentStudy"]
    return studies


def on_server(client: Orthanc) -> set[str]:
    return set(client.ids("studies"))


def test_study_deletes_exactly_that_study(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    studies = fill(client_a)
    gone = studies[0, 1]
    result = cli("delete", "--on", "a", "--study", gone, "--yes", cwd=workdir)
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert (
        "to delete from a (" in result.stdout
        and ": 1 patient, 1 study, 1 series, 2 instances, " in result.stdout
    )
    assert "deleted 1 study (2 instances" in result.stdout
    assert on_server(client_a) == set(studies.values()) - {gone}
    assert client_a.statistics()["CountInstances"] == 6
    assert patient_id(SHAPE, 0) not in result.stdout + result.stderr  # no patient ID without --log-phi


def test_query_deletes_its_matches_and_nothing_else(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    studies = fill(client_a)
    result = cli("delete", "--on", "a", "--query", f"PatientID={patient_id(SHAPE, 1)}", "--yes", cwd=workdir)
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert "1 patient, 2 studies, 2 series, 4 instances" in result.stdout
    assert on_server(client_a) == {studies[0, 0], studies[0, 1]}
    assert client_a.statistics()["CountPatients"] == 1


def test_dry_run_counts_and_deletes_nothing(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    studies = fill(client_a)
    before = client_a.statistics()
    result = cli("delete", "--on", "a", "--all", "--dry-run", cwd=workdir)
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    size = int(before["TotalDiskSize"]) / 1e3
    assert f": 2 patients, 4 studies, 4 series, 8 instances, {size:.1f} kB\n" in result.stdout
    assert "--all: this deletes EVERYTHING on a (" in result.stdout
    assert "dry run: nothing deleted" in result.stdout
    assert on_server(client_a) == set(studies.values())
    assert latest_run(workdir) is None  # no run made

    some = cli(
        "delete", "--on", "a", "--patient", patient_id(SHAPE, 0), "--dry-run", "--log-phi", cwd=workdir
    )
    assert "1 patient, 2 studies, 2 series, 4 instances" in some.stdout
    assert some.stdout.count(f"patient {patient_id(SHAPE, 0)}") == 2  # named with --log-phi only
    assert on_server(client_a) == set(studies.values())


def test_all_without_yes_or_terminal_is_refused(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    studies = fill(client_a)
    result = cli("delete", "--on", "a", "--all", cwd=workdir)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("pacsflow: error: refusing to delete every study on a (") and "--yes" in line
    assert on_server(client_a) == set(studies.values())
    assert latest_run(workdir) is None


def test_all_with_yes_deletes_everything(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    fill(client_a)
    result = cli("delete", "--on", "a", "--all", "--yes", cwd=workdir)
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert "deleted 4 studies (8 instances" in result.stdout
    statistics = client_a.statistics()
    assert (statistics["CountPatients"], statistics["CountStudies"], statistics["CountInstances"]) == (
        0,
        0,
        0,
    )


def test_a_query_matching_everything_is_treated_as_all(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    studies = fill(client_a)
    result = cli("delete", "--on", "a", "--query", "PatientID=PF*", cwd=workdir)
    assert result.returncode == 2
    assert "the selection matches every study, as --all: this deletes EVERYTHING on a (" in result.stdout
    assert "refusing to delete every study" in result.stderr and "--yes" in result.stderr
    assert on_server(client_a) == set(studies.values())


def test_a_selection_without_yes_or_terminal_is_refused(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    studies = fill(client_a)
    result = cli("delete", "--on", "a", "--study", studies[0, 0], cwd=workdir)
    assert result.returncode == 2
    assert result.stderr == "pacsflow: error: no terminal to confirm on: add --yes to delete without asking\n"
    assert on_server(client_a) == set(studies.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study", UNKNOWN], "--study matches no study on a ("),
        ([], "give --study, --accession, --patient or --query, or --all (not both)"),
        (["--all", "--patient", "PF061-00000"], "give --study, --accession, --patient or --query, or --all"),
        (["--study", "x", "--query", "PatientID=PF*"], "give --study or --query, not both"),
    ],
)
def test_bad_usage_is_one_line_and_deletes_nothing(
    workdir: Path, config_file: Path, client_a: Orthanc, args: list[str], message: str
) -> None:
    studies = fill(client_a)
    result = cli("delete", "--on", "a", *args, "--yes", cwd=workdir)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("pacsflow: error: ") and message in line, line
    assert UNKNOWN not in line  # the values given are shown with --log-phi only
    assert on_server(client_a) == set(studies.values())
    assert latest_run(workdir) is None


def test_a_study_deleted_meanwhile_counts_as_already_deleted(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    studies = fill(client_a)
    chosen = [studies[0, 0], studies[1, 0]]
    planned = cli(
        "delete", "--on", "a", "--study", chosen[0], "--study", chosen[1], "--yes", "--plan-only", cwd=workdir
    )
    assert planned.returncode == EXIT_OK, planned.stdout + planned.stderr
    assert on_server(client_a) == set(studies.values())  # planned, nothing deleted yet
    run = latest_run(workdir)
    client_a.delete_resource("studies", chosen[1])  # someone else deletes one meanwhile
    resumed = cli("resume", run.id, cwd=workdir)
    assert resumed.returncode == EXIT_OK, resumed.stdout + resumed.stderr
    assert "deleted 1 study (2 instances" in resumed.stdout and "1 already deleted" in resumed.stdout
    assert on_server(client_a) == {studies[0, 1], studies[1, 1]}
    shown = cli("run", "show", run.id, "--items", cwd=workdir).stdout
    assert "items      1 done" in shown and "failed" not in shown
    assert f"deletion #1 2 studies: {chosen[0]} and 1 more: done (1 already deleted)" in shown
    assert f"already deleted: {chosen[1]}" in shown


def test_the_ledger_records_each_deleted_study(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    studies = fill(client_a)
    uids = {
        study: client_a.resource("studies", study)["MainDicomTags"]["StudyInstanceUID"]
        for study in studies.values()
    }
    result = cli("delete", "--on", "a", "--accession", "A6100000*", "--yes", cwd=workdir)  # patient 0
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    deleted = {studies[0, 0], studies[0, 1]}
    assert on_server(client_a) == set(studies.values()) - deleted
    shown = cli("run", "show", "last", "--items", cwd=workdir).stdout
    for study in deleted:
        assert f"deleted: id={study} uid={uids[study]} series=1 instances=2 bytes=" in shown
    view = json.loads(cli("run", "show", "last", "--items", "--json", cwd=workdir).stdout)
    (item,) = view["listed_items"]
    assert item["status"] == DONE and {one["id"] for one in item["result"]["deleted"]} == deleted
    assert view["params"]["matched"] == 2


def test_a_server_without_bulk_delete_deletes_study_by_study(
    workdir: Path, settings: Settings, client_a: Orthanc
) -> None:
    studies = fill(client_a)
    op = Delete(settings, {"on": "a", "patients": [patient_id(SHAPE, 1)]})
    op.server.capabilities()
    op.server._capabilities = Capabilities("1.9.3", 9, "old")  # before /tools/bulk-delete
    ledger = Ledger(settings.ledger)
    result = Engine(ledger, settings).start(op)
    assert result.exit_code == EXIT_OK
    items = ledger.items(result.run_id)
    assert [len(item.payload["ids"]) for item in items] == [1, 1]  # one DELETE /studies/{id} each
    assert on_server(client_a) == {studies[0, 0], studies[0, 1]}


def test_a_study_back_after_its_delete_fails_and_keeps_the_record(
    workdir: Path, settings: Settings, client_a: Orthanc
) -> None:
    """A modality still sending makes the study again right after its delete: that item fails (exit 1),
    and its result still says what was deleted."""
    studies = fill(client_a)
    op = Delete(settings, {"on": "a", "patients": [patient_id(SHAPE, 0)]})
    real = op._delete

    def delete_then_receive(batch: list[str]) -> None:
        real(batch)
        client_a.upload(instance_bytes(SHAPE, 0, 1, 0, 0))  # study (0, 1) arrives again

    op._delete = delete_then_receive  # type: ignore[method-assign]
    ledger = Ledger(settings.ledger)
    result = Engine(ledger, settings).start(op)
    assert result.exit_code == EXIT_FAILED
    (item,) = ledger.items(result.run_id, FAILED)
    assert "1 study still on" in (item.last_error or "")
    assert [one["id"] for one in item.result["deleted"]] == [studies[0, 0]]
    assert item.result["not_deleted"] == [studies[0, 1]]
    assert on_server(client_a) == {studies[0, 1], studies[1, 0], studies[1, 1]}


def _on_a_terminal(workdir: Path, args: list[str], answer: str) -> str:
    """`pacsflow ARGS` with a terminal as its stdin, answering ANSWER; its output."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    with subprocess.Popen(
        [*PACSFLOW, *args],
        cwd=workdir,
        env=env,
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        os.close(terminal)
        os.write(controller, answer.encode() + b"\n")
        output, _ = process.communicate(timeout=60)
    os.close(controller)
    assert process.returncode == (EXIT_OK if answer == "y" else EXIT_FAILED), output
    return output.decode()


def test_on_a_terminal_it_asks_first(workdir: Path, config_file: Path, client_a: Orthanc) -> None:
    studies = fill(client_a)
    declined = _on_a_terminal(workdir, ["delete", "--on", "a", "--all"], "n")
    assert "Delete EVERY study on a (" in declined and " (4 studies)? [y/N]" in declined
    assert "nothing deleted" in declined
    assert on_server(client_a) == set(studies.values())
    accepted = _on_a_terminal(workdir, ["delete", "--on", "a", "--study", studies[1, 1]], "y")
    assert "Delete 1 study from a (" in accepted and ")? [y/N]" in accepted
    assert on_server(client_a) == set(studies.values()) - {studies[1, 1]}


def test_help_shows_examples(workdir: Path) -> None:
    result = cli("delete", "--help", cwd=workdir)
    assert result.returncode == 0 and "\n  Example: pacsflow delete --on " in result.stdout


def test_a_delete_whose_answer_was_lost_is_recorded_by_its_retry(
    workdir: Path, settings: Settings, client_a: Orthanc
) -> None:
    studies = fill(client_a)
    op = Delete(settings, {"on": "a", "patients": [patient_id(SHAPE, 0)]})
    op.preflight()
    op.summary()  # what the command shows before it asks: the counts go with the items
    real, calls = op._delete, []

    def lost_answer(batch: list[str]) -> None:
        real(batch)  # the server deletes...
        calls.append(batch)
        if len(calls) == 1:  # ...and the answer never arrives
            raise TransientError("timed out on POST /tools/bulk-delete")

    op._delete = lost_answer  # type: ignore[method-assign]
    ledger = Ledger(settings.ledger)
    result = Engine(ledger, settings).start(op)
    assert result.exit_code == EXIT_OK
    (item,) = ledger.items(result.run_id)
    assert {one["id"] for one in item.result["deleted_by_an_earlier_attempt"]} == {
        studies[0, 0],
        studies[0, 1],
    }
    assert "deleted 2 studies (4 instances" in result.lines[0]
    assert on_server(client_a) == {studies[1, 0], studies[1, 1]}


def test_a_run_stopped_while_listing_deletes_only_what_it_listed(
    workdir: Path, settings: Settings, client_a: Orthanc, caplog: pytest.LogCaptureFixture
) -> None:
    studies = fill(client_a)
    ledger = Ledger(settings.ledger)
    # confirmed for three studies, stopped after listing one of them (status stays "planning")
    run_id = ledger.create_run("delete", {"on": "a", "all": True, "matched": 3})
    ledger.add_items(run_id, [PlannedItem("deletion", "d/1", {"ids": [studies[0, 0]]})])
    client_a.upload(instance_bytes(Shape(patients=1, series=1, instances=1, pixels=16, seed=99), 0, 0, 0, 0))
    result = Engine(ledger, settings).resume(run_id)
    assert result.exit_code == EXIT_OK
    assert len(on_server(client_a)) == 4  # three of the first four, and the study that came later
    assert studies[0, 0] not in on_server(client_a)
    assert "only the 1 it listed are deleted, not the other 2" in caplog.text
