"""Long-running commands: worker (join the runs of a shared ledger) and the demo."""

from __future__ import annotations

import threading
from pathlib import Path

import typer

from pacsflow.cli.app import (
    CredentialsOption,
    GiveUpOption,
    WorkersOption,
    app,
    errors_to_exit,
    options,
    report,
    session,
    stop_on_signals,
)


@app.command()
@errors_to_exit
def worker(
    ctx: typer.Context,
    ledger: str | None = typer.Option(
        None, "--ledger", help="shared ledger URL (PostgreSQL for many machines)"
    ),
    once: bool = typer.Option(False, "--once", help="exit when no run has work left"),
    workers: int | None = WorkersOption,
    poll: float = typer.Option(5.0, "--poll", min=0.1, help="seconds between looks for new work"),
    credentials: list[str] = CredentialsOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Join the runs of a shared ledger and work their items until stopped.

    A run that cannot start here (a server down, a password missing) is tried again later, with
    backoff from 15 seconds to 10 minutes; with --once it is left to others and the exit status says so.

    Example: pacsflow worker --ledger postgresql://pf@db/pacsflow
    """
    if ledger:
        options(ctx).ledger = ledger
    pacsflow = session(ctx)
    pacsflow.remember_credentials(credentials)
    stop = threading.Event()
    with stop_on_signals(stop):
        code = pacsflow.work(
            once=once,
            poll=poll,
            workers=workers,
            give_up_after=give_up_after,
            stop=stop,
            on_result=report,
        )
    raise typer.Exit(code)


@app.command()
@errors_to_exit
def demo(
    ctx: typer.Context,
    keep: bool = typer.Option(False, "--keep", help="leave the servers' data under .pacsflow/demo"),
) -> None:
    """Start two throwaway Orthancs, generate data, upload, transfer, download, and summarise.

    Example: pacsflow demo --keep
    """
    from pacsflow.demo import run_demo

    raise typer.Exit(run_demo(Path(".pacsflow/demo"), keep=keep, quiet=options(ctx).quiet))
