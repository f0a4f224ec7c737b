"""Commands between servers and DICOM nodes: check, transfer, clone, forward, compare."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pacsflow.cli.app import (
    AccessionOption,
    AnonymizeOption,
    BurnedInOption,
    GiveUpOption,
    PatientOption,
    PlanOnlyOption,
    ProfileOption,
    QueryOption,
    StudyOption,
    WorkersOption,
    app,
    deidentify_params,
    errors_to_exit,
    parse_query,
    report,
    session,
    start_run,
    stop_on_signals,
)
from pacsflow.errors import ConfigError
from pacsflow.status import EXIT_INTERRUPTED, EXIT_OK

if TYPE_CHECKING:
    from pacsflow.api import Comparison, Followed, Pacsflow
    from pacsflow.engine import RunResult

WindowOption = typer.Option(None, "--window", help="work only then, e.g. 'Mon-Fri 19:00-07:00, Sat-Sun'")
PollOption = typer.Option(2.0, "--poll", min=0.1, help="seconds between looks at the change feed")


@app.command()
@errors_to_exit
def check(
    ctx: typer.Context,
    targets: list[str] = typer.Argument(None, help="server or modality names/URLs (default: all configured)"),
) -> None:
    """Is every configured server and modality reachable, with which version, and does our login work?

    Example: pacsflow check main PACS@10.0.0.5:104
    """
    lines, ok = session(ctx).check(targets or [])
    for line in lines:
        typer.echo(line)
    raise typer.Exit(EXIT_OK if ok else 1)


@app.command()
@errors_to_exit
def transfer(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="source Orthanc server"),
    destination: str = typer.Option(..., "--to", help="destination Orthanc server or DICOM MODALITY"),
    study: list[str] = StudyOption,
    accession: list[str] = AccessionOption,
    patient: list[str] = PatientOption,
    query: list[str] = QueryOption,
    via: str | None = typer.Option(
        None,
        "--via",
        help="rest (default for a server), peer (the source sends), dicom (default for a MODALITY)",
    ),
    peer: str | None = typer.Option(None, "--peer", help="with --via peer: the source's name for the peer"),
    modality: str | None = typer.Option(
        None, "--modality", help="with --via dicom: the source's name for it"
    ),
    anonymize: bool = AnonymizeOption,
    option: list[str] = ProfileOption,
    allow_burned_in: bool = BurnedInOption,
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Copy studies to another server: only what is missing, each study verified afterwards.

    Example: pacsflow transfer --from main --to backup --query StudyDate=2024-01-01-2024-12-31
    Example: pacsflow transfer --from main --to backup --patient PF001 --accession A123
    Example: pacsflow transfer --from main --to research --anonymize
    """
    deidentify = deidentify_params(anonymize, option, allow_burned_in)
    if deidentify:
        if via not in (None, "rest") or peer or modality:
            raise ConfigError("--anonymize copies through pacsflow itself: not with --via peer or dicom")
        selection = {
            "studies": study or None,
            "accessions": accession or None,
            "patients": patient or None,
            "query": parse_query(query),
        }
        params = {
            "from": source,
            "to": destination,
            **selection,
            "all": not any(selection.values()),
            "options": deidentify["options"],
            "allow_burned_in": deidentify["allow_burned_in"],
        }
        start_run(ctx, "anonymize-copy", params, workers, plan_only, give_up_after)
        return
    params = {
        "from": source,
        "to": destination,
        "studies": study or None,
        "accessions": accession or None,
        "patients": patient or None,
        "query": parse_query(query),
        "via": via,
        "peer": peer,
        "modality": modality,
    }
    start_run(ctx, "transfer", params, workers, plan_only, give_up_after)


@app.command()
@errors_to_exit
def clone(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="source Orthanc server"),
    destination: str = typer.Option(..., "--to", help="destination Orthanc server"),
    follow: bool = typer.Option(False, "--follow", help="then keep copying new instances until stopped"),
    window: str | None = WindowOption,
    poll: float = PollOption,
    workers: int | None = WorkersOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Copy everything to another server; with --follow keep following the source's new instances.

    A clone of the same source and destination continues the earlier clone run: a crash or a stop loses
    nothing, and the change feed is read again from the last point whose changes were all done.

    Example: pacsflow clone --from main --to backup --follow --window "Mon-Fri 19:00-07:00, Sat-Sun"
    """
    stop = threading.Event()
    pacsflow = session(ctx)
    codes: list[int] = []

    def print_catch_up(result: RunResult) -> None:
        codes.append(report(result))
        if follow and not stop.is_set() and result.error is None:
            typer.echo(f"following the changes of {pacsflow.settings.public_spec(source)} (Ctrl-C to stop)")

    with stop_on_signals(stop):
        followed = pacsflow.clone(
            source,
            destination,
            follow=follow,
            window=window,
            poll=poll,
            workers=workers,
            give_up_after=give_up_after,
            stop=stop,
            on_caught_up=print_catch_up,
        )
    if not followed.following:
        raise typer.Exit(codes[0])
    typer.echo(
        f"stopped following (run {followed.run_id}): {_copied(followed)} since this command started; "
        "continue with the same `pacsflow clone --follow`"
    )
    raise typer.Exit(EXIT_INTERRUPTED if followed.stopped else EXIT_OK)


def _copied(followed: Followed) -> str:
    """What a clone copied, from its instance items: '12 instances copied (3.4 MB), 2 already there'."""
    from pacsflow.ops.transfer import INSTANCE
    from pacsflow.wording import plural

    text = f"{plural(followed.count(INSTANCE, 'done'), 'instance')} copied ({followed.nbytes / 1e6:.1f} MB)"
    already = followed.count(INSTANCE, "skipped")
    failed = sum(n for (_, status), n in followed.items.items() if status == "failed")
    return text + (f", {already} already there" if already else "") + (f", {failed} failed" if failed else "")


@app.command()
@errors_to_exit
def forward(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="source Orthanc server (e.g. an inbox)"),
    destinations: list[str] = typer.Option(..., "--to", help="destination server or DICOM node (repeatable)"),
    trigger: str = typer.Option(
        "stable-study", "--trigger", help="stable-study (whole studies) or new-instance (each at once)"
    ),
    window: str | None = WindowOption,
    poll: float = PollOption,
    workers: int | None = WorkersOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Send each stable study to every destination, then delete it from the source once all hold it.

    A failure never deletes: the study stays on the source and is tried again with backoff.

    Example: pacsflow forward --from inbox --to pacs1 --to PACS@10.0.0.5:104
    """
    stop = threading.Event()
    pacsflow = session(ctx)

    def announce(_result: RunResult) -> None:
        shown = [pacsflow.settings.public_spec(spec) for spec in destinations]
        what = "each new instance" if trigger == "new-instance" else "stable studies"
        typer.echo(
            f"forwarding {what} of {pacsflow.settings.public_spec(source)} to {', '.join(shown)} "
            "(Ctrl-C to stop)"
        )

    with stop_on_signals(stop):
        followed = pacsflow.forward(
            source,
            destinations,
            trigger=trigger,
            window=window,
            poll=poll,
            workers=workers,
            give_up_after=give_up_after,
            stop=stop,
            on_caught_up=announce,
        )
    if followed.first.error is not None:
        raise typer.Exit(report(followed.first))
    typer.echo(
        f"stopped forwarding (run {followed.run_id}): {_forwarded(followed, trigger)} since this "
        "command started; the same command continues it"
    )
    raise typer.Exit(EXIT_INTERRUPTED if followed.stopped else EXIT_OK)


def _forwarded(followed: Followed, trigger: str) -> str:
    """What a forward did, from its items: '3 studies forwarded and deleted from the source (6 copies
    sent, 0 failed)'; a delete item ends done once every destination held the study and it was deleted."""
    from pacsflow.ops.transfer import DELETE, FORWARD
    from pacsflow.wording import plural

    what = "instance" if trigger == "new-instance" else "study"
    deleted, sent = followed.count(DELETE, "done"), followed.count(FORWARD, "done")
    failed = sum(n for (_, status), n in followed.items.items() if status == "failed")
    return (
        f"{plural(deleted, what)} forwarded and deleted from the source "
        f"({plural(sent, 'copy')} sent, {failed} failed)"
    )


@app.command()
@errors_to_exit
def compare(
    ctx: typer.Context,
    a: str = typer.Argument(..., metavar="A", help="Orthanc server, or DICOM node (name or AET@host:port)"),
    b: str = typer.Argument(..., metavar="B", help="Orthanc server, or DICOM node (name or AET@host:port)"),
    level: str = typer.Option("study", "--level", help="study, series or instance"),
    query: list[str] = typer.Option(None, "--query", help="TAG=VALUE to compare only part (repeatable)"),
    from_date: str | None = typer.Option(None, "--from-date", help="StudyDate from (YYYYMMDD or YYYY-MM-DD)"),
    to_date: str | None = typer.Option(None, "--to-date", help="StudyDate to (YYYYMMDD or YYYY-MM-DD)"),
    out: Path | None = typer.Option(
        None, "--out", help="write the differences to this CSV (mode 0600: it names patients)"
    ),
    transfer_missing: bool = typer.Option(False, "--transfer-missing", help="copy what B lacks from A"),
    workers: int | None = WorkersOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """What A and B hold, side by side; exit 0 when they match, 1 when they differ or neither holds
    anything that matches (nothing was compared, so nothing is vouched for).

    Example: pacsflow compare main backup --level series --out diff.csv --transfer-missing
    Example: pacsflow compare main PACS@10.0.0.5:104 --from-date 2024-01-01 --to-date 2024-01-31
    """
    if out is not None and not out.resolve().parent.is_dir():  # before the servers are asked anything
        raise ConfigError(f"--out {out}: there is no folder {out.resolve().parent}")
    pacsflow = session(ctx)
    stop = threading.Event()
    with stop_on_signals(stop):
        found = pacsflow.compare(
            a,
            b,
            level=level,
            query=parse_query(query),
            from_date=from_date,
            to_date=to_date,
            transfer_missing=transfer_missing,
            workers=workers,
            give_up_after=give_up_after,
            stop=stop,
            on_compared=lambda comparison: _print_comparison(pacsflow, comparison, out),
        )
    if found.empty:  # a script's "compare A B && retire A" must not pass on a comparison of nothing
        raise typer.Exit(1)
    if found.equal:
        raise typer.Exit(EXIT_OK)
    if found.transfer is not None:
        raise typer.Exit(report(found.transfer))
    raise typer.Exit(1)


def _print_comparison(pacsflow: Pacsflow, comparison: Comparison, out: Path | None) -> None:
    typer.echo(comparison.summary)
    if out is not None:
        pacsflow.write_differences(comparison, out)
        typer.echo(f"differences written to {out}")
