"""Commands about runs in the ledger: runs, run show, resume, retry."""

from __future__ import annotations

import threading

import typer

from pacsflow.cli.app import (
    CredentialsOption,
    GiveUpOption,
    WorkersOption,
    app,
    errors_to_exit,
    report,
    run_app,
    session,
    stop_on_signals,
)

RunArgument = typer.Argument(..., metavar="RUN", help="run ID, a unique prefix, or 'last'")
JsonOption = typer.Option(
    False, "--json", help="print JSON for programs (the same keys every time; never a password)"
)


def _print_json(data: object) -> None:
    import json

    from pacsflow.runview import printable

    typer.echo(printable(json.dumps(data, indent=2, ensure_ascii=False)))


@app.command()
@errors_to_exit
def runs(
    ctx: typer.Context,
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="how many runs, newest first"),
    as_json: bool = JsonOption,
) -> None:
    """List recent runs. A run whose process was killed shows as interrupted: resume it.

    Example: pacsflow runs -n 5 --json
    """
    from pacsflow.engine import describe_run

    found = session(ctx).runs(limit)
    if as_json:
        from pacsflow.runview import run_record

        _print_json([run_record(run) for run in found])  # names no file or patient: see runview
        return
    if not found:
        from pacsflow.ledger.database import safe_url

        typer.echo(f"no runs yet in the ledger {safe_url(session(ctx).settings.ledger)}")
    for run in found:
        typer.echo(describe_run(run))


@run_app.command("show")
@errors_to_exit
def run_show(
    ctx: typer.Context,
    run_ref: str = RunArgument,
    failed: bool = typer.Option(False, "--failed", help="list the failed items with their reasons"),
    items: bool = typer.Option(
        False, "--items", help="list the items with what each did (a delete: each study it deleted)"
    ),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="how many items to list"),
    as_json: bool = JsonOption,
) -> None:
    """Show a run: its parameters, counts, (with --failed) what failed and why, (with --items) its items.

    Example: pacsflow run show last --failed --json
    """
    if as_json:
        _print_json(session(ctx).view(run_ref, failed=failed, limit=limit, items=items))
        return
    for line in session(ctx).show(run_ref, failed=failed, limit=limit, items=items):
        typer.echo(line)


@app.command()
@errors_to_exit
def resume(
    ctx: typer.Context,
    run_ref: str = RunArgument,
    workers: int | None = WorkersOption,
    credentials: list[str] = CredentialsOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Continue a stopped or killed run where it left off (also joins a run another process works).

    Example: pacsflow resume last --credentials http://alice:pw@10.0.0.7:8042
    """
    stop = threading.Event()
    with stop_on_signals(stop):
        result = session(ctx).resume(
            run_ref, workers=workers, give_up_after=give_up_after, stop=stop, credentials=credentials or ()
        )
    raise typer.Exit(report(result))


@app.command()
@errors_to_exit
def retry(
    ctx: typer.Context,
    run_ref: str = RunArgument,
    workers: int | None = WorkersOption,
    credentials: list[str] = CredentialsOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Put a run's failed items back to pending and work them again.

    Example: pacsflow retry last
    """
    pacsflow = session(ctx)
    stop = threading.Event()

    def put_back(run_id: str, count: int) -> None:
        from pacsflow.wording import plural

        typer.echo(f"run {run_id}: {plural(count, 'failed item')} put back")

    with stop_on_signals(stop):
        result = pacsflow.retry(
            run_ref,
            workers=workers,
            give_up_after=give_up_after,
            stop=stop,
            credentials=credentials or (),
            on_put_back=put_back,
        )
    raise typer.Exit(report(result))
