"""Commands that report on servers and runs: inventory, validate."""

from __future__ import annotations

from pathlib import Path

import typer

from pacsflow.cli.app import (
    AccessionOption,
    GiveUpOption,
    PatientOption,
    QueryOption,
    StudyOption,
    WorkersOption,
    app,
    errors_to_exit,
    parse_query,
    session,
    start_run,
)
from pacsflow.errors import ConfigError


@app.command()
@errors_to_exit
def inventory(
    ctx: typer.Context,
    source: str = typer.Option(
        ...,
        "--from",
        metavar="SERVER|RUN",
        help="Orthanc server (name or URL), or a download run (ID, prefix or 'last')",
    ),
    out: Path = typer.Option(
        ..., "--out", metavar="FILE.csv", help="the CSV to write (mode 0600: it names patients)"
    ),
    study: list[str] = StudyOption,
    accession: list[str] = AccessionOption,
    patient: list[str] = PatientOption,
    query: list[str] = QueryOption,
    workers: int | None = WorkersOption,
) -> None:
    """One CSV row per series: patient, study and series identifiers, dates, modality, description,
    instances expected and present, size, and status (complete, incomplete, extra or unknown).

    From a server, the expected count is the one Orthanc computes from the series' tags (unknown when
    it has none); from a download run, the count the run found on the server.

    Example: pacsflow inventory --from main --out inventory.csv
    Example: pacsflow inventory --from main --out ct.csv --query Modality=CT
    Example: pacsflow inventory --from last --out downloaded.csv
    """
    from pacsflow.inventory import inventory as take_inventory
    from pacsflow.inventory import summary, write_csv
    from pacsflow.ops.params import SelectParams
    from pacsflow.selection import Selection
    from pacsflow.wording import plural

    if not out.resolve().parent.is_dir():  # before any server is asked
        raise ConfigError(f"--out {out}: there is no folder {out.resolve().parent}")
    # checked as a run's selectors are: an empty value, or selectors and --query together, are refused
    chosen = SelectParams.parse(
        {
            "studies": study or None,
            "accessions": accession or None,
            "patients": patient or None,
            "query": parse_query(query),
        }
    )
    found = take_inventory(session(ctx), source, Selection.of(chosen), workers=workers)
    try:
        write_csv(out, found.rows)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write it: {exc.strerror or type(exc).__name__}") from None
    typer.echo(summary(found.rows, f"of {plural(found.studies, 'study')} from {found.source}"))
    typer.echo(f"written to {out}")


@app.command()
@errors_to_exit
def validate(
    ctx: typer.Context,
    on: str = typer.Option(..., "--on", help="Orthanc server (name or URL)"),
    study: list[str] = StudyOption,
    accession: list[str] = AccessionOption,
    patient: list[str] = PatientOption,
    query: list[str] = QueryOption,
    workers: int | None = WorkersOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Check each series' instance count against the count Orthanc expects for it (from tags such as
    ImagesInAcquisition with NumberOfTemporalPositions, or CardiacNumberOfImages), and its own verdict.

    One line per series whose count is wrong (named by study UID, series number, modality and
    description; the patient only with --log-phi), then how many were complete, incomplete or unknown.
    Exit 1 when a series is incomplete or inconsistent; a series without an expected count is unknown,
    not a failure. The run is in the ledger: `pacsflow run show RUN --failed`, `pacsflow retry RUN`.

    Example: pacsflow validate --on main
    Example: pacsflow validate --on main --query StudyDate=2024-01-01-2024-12-31
    """
    params = {
        "on": on,
        "studies": study or None,
        "accessions": accession or None,
        "patients": patient or None,
        "query": parse_query(query),
    }
    start_run(ctx, "validate", params, workers, plan_only=False, give_up_after=give_up_after)
