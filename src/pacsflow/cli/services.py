"""Long-running commands: worker (join the runs of a shared ledger), the storage SCP and the demo."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

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
def scp(
    ctx: typer.Context,
    to: str = typer.Option(
        ..., "--to", metavar="DIR|SERVER", help="folder, or Orthanc server (configured name or URL)"
    ),
    aet: str | None = typer.Option(
        None, "--aet", metavar="AET", help="our AE title [default: config aet, PACSFLOW]"
    ),
    port: int | None = typer.Option(
        None, "--port", min=0, max=65535, help="DICOM port [default: config port, 11112]"
    ),
    accept_aet: list[str] = typer.Option(
        None,
        "--accept-aet",
        metavar="AET",
        help="calling AE title allowed to send (repeatable; default: any)",
    ),
    bind: str = typer.Option("0.0.0.0", "--bind", metavar="HOST", help="address to listen on"),
) -> None:
    """Receive images over DICOM (C-ECHO, C-STORE of every storage class) until stopped.

    Each instance is kept as received, compressed or not: written atomically as
    DIR/PatientID/StudyUID/SeriesUID/SOPUID.dcm, or sent to an Orthanc server; one that cannot be kept
    is refused with a failure status, so the sender knows. Every instance is an item of the session's
    run in the ledger. Ctrl-C or SIGTERM lets the associations in progress finish, then exits 0.

    Example: pacsflow scp --aet PACSFLOW --port 11112 --to incoming/ --accept-aet CT01
    """
    from pacsflow.wording import plural

    pacsflow = session(ctx)

    def listening(server: Any) -> None:
        host, bound = server.address
        where = f"{server.destination.action} {server.destination.label}"
        typer.echo(
            f"listening as {server.aet} on {host}:{bound}, {where} (run {server.run_id}; Ctrl-C to stop)"
        )

    stop = threading.Event()
    with stop_on_signals(stop):
        received = pacsflow.scp(
            to, aet=aet, port=port, bind=bind, accept_aets=accept_aet or [], stop=stop, on_listening=listening
        )
    failed = f", {plural(received.failures, 'failure')}" if received.failures else ""
    typer.echo(
        f"stopped (run {received.run_id}): {plural(received.instances, 'instance')} received "
        f"({received.nbytes / 1e6:.1f} MB){failed}"
    )
    raise typer.Exit(0)


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
