"""Commands that remove data from servers: delete."""

# Deleting cannot be undone, so the command shows what goes before anything goes, and asks. A script
# (no terminal to ask on) must say --yes; everything on a server, by --all or by a selection that
# happens to match every study, is said so in as many words.

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, cast

import typer

from pacsflow.cli.app import (
    AccessionOption,
    GiveUpOption,
    PatientOption,
    PlanOnlyOption,
    QueryOption,
    WorkersOption,
    app,
    errors_to_exit,
    parse_query,
    report,
    session,
    stop_on_signals,
)
from pacsflow.errors import ConfigError
from pacsflow.status import EXIT_FAILED, EXIT_OK
from pacsflow.wording import plural

if TYPE_CHECKING:
    from pacsflow.ops.delete import Delete, DeletionSummary

#: studies listed one by one with --log-phi; more are counted
_LISTED = 50

# unlike the other study-picking commands, no --study here does not mean every study
DeleteStudyOption = typer.Option(None, "--study", help="Orthanc study ID or StudyInstanceUID (repeatable)")


@app.command()
@errors_to_exit
def delete(
    ctx: typer.Context,
    on: str = typer.Option(..., "--on", help="Orthanc server (name or URL) to delete from"),
    study: list[str] = DeleteStudyOption,
    accession: list[str] = AccessionOption,
    patient: list[str] = PatientOption,
    query: list[str] = QueryOption,
    all_studies: bool = typer.Option(False, "--all", help="every study on the server"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only show what would be deleted"),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="delete without asking (needed where there is no terminal to ask on)"
    ),
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Delete studies from a server: shows what goes (patients, studies, size), asks, records each one.

    Example: pacsflow delete --on main --query StudyDate=-20191231 --dry-run
    Example: pacsflow delete --on main --study 1b2c3d4e-5f6a7b8c-9d0e1f2a-3b4c5d6e-7f8a9b0c
    Example: pacsflow delete --on test --all --yes
    """
    params = {
        "on": on,
        "studies": study or None,
        "accessions": accession or None,
        "patients": patient or None,
        "query": parse_query(query),
        "all": all_studies,
    }
    pacsflow = session(ctx)
    op = pacsflow.prepare("delete", params, workers=workers)  # bad usage and unknown studies stop here
    try:
        summary = cast("Delete", op).summary()
        _show(summary, all_studies, pacsflow.log_phi)
        if not summary.studies or dry_run:
            if dry_run:
                typer.echo("dry run: nothing deleted")
            raise typer.Exit(EXIT_OK)
        if not yes:
            _ask(summary)
    except BaseException:
        op.close()
        raise
    if plan_only:
        result = pacsflow.start(op, plan_only=True, give_up_after=give_up_after)
        typer.echo(
            f"run {result.run_id}: planned {plural(result.counts.get('pending', 0), 'item')}; "
            f"delete them with `pacsflow resume {result.run_id}`"
        )
        raise typer.Exit(EXIT_OK)
    stop = threading.Event()
    with stop_on_signals(stop):
        result = pacsflow.start(op, give_up_after=give_up_after, stop=stop)
    raise typer.Exit(report(result))


def _show(summary: DeletionSummary, all_studies: bool, log_phi: bool) -> None:
    """What would go, on stdout: counts always; patients and studies by name only with --log-phi."""
    if not summary.studies:
        what = "no study" if all_studies else "the selection matches no study"
        typer.echo(f"{what} on {summary.server}: nothing to delete")
        return
    if summary.everything:
        how = "--all" if all_studies else "the selection matches every study, as --all"
        typer.echo(f"{how}: this deletes EVERYTHING on {summary.server}")
    typer.echo(f"to delete from {summary.server}: {summary.counts()}")
    if not log_phi:
        return
    for facts in summary.facts[:_LISTED]:
        typer.echo(
            f"  patient {facts.patient_id}  study {facts.date} {facts.description}  "
            f"{plural(facts.instances, 'instance')}  ({facts.id})"
        )
    if len(summary.facts) > _LISTED:
        typer.echo(f"  ... and {plural(len(summary.facts) - _LISTED, 'more study', 'more studies')}")


def _ask(summary: DeletionSummary) -> None:
    """Ask on the terminal; without one, refuse (exit 2): a script must say --yes. Declining exits 1."""
    if not sys.stdin.isatty():
        if summary.everything:
            raise ConfigError(
                f"refusing to delete every study on {summary.server} without a terminal to confirm on; "
                "add --yes to delete them all"
            )
        raise ConfigError("no terminal to confirm on: add --yes to delete without asking")
    if summary.everything:
        question = f"Delete EVERY study on {summary.server} ({plural(len(summary.studies), 'study')})?"
    else:
        question = f"Delete {plural(len(summary.studies), 'study')} from {summary.server}?"
    # the prompt on stderr: stdout may be a file, the question must still reach the person
    if not typer.confirm(question, default=False, err=True):
        typer.echo("nothing deleted")
        raise typer.Exit(EXIT_FAILED)
