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


@app.command()
@errors_to_exit
def runs(ctx: typer.Context, limit: int = typer.Option(20, "--limit", "-n", min=1)) -> None:
    """List recent runs.

    Example: pacsflow runs -n 5
    """
    from pacsflow.engine import describe_run

    found = session(ctx).runs(limit)
    if not found:
        typer.echo("no runs yet")
    for run in found:
        typer.echo(describe_run(run))


@run_app.command("show")
@errors_to_exit
def run_show(
    ctx: typer.Context,
    run_ref: str = RunArgument,
    failed: bool = typer.Option(False, "--failed", help="list the failed items with their reasons"),
    limit: int = typer.Option(50, "--limit", "-n", min=1),
) -> None:
    """Show a run: its parameters, counts, and (with --failed) what failed and why.

    Example: pacsflow run show last --failed
    """
    for line in session(ctx).show(run_ref, failed=failed, limit=limit):
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
        typer.echo(f"run {run_id}: {count} failed items put back")

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
