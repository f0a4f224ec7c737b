"""Commands that pull images from DICOM nodes: retrieve (C-FIND, then C-MOVE or C-GET per series) and
migrate (a date range moved into an Orthanc, day by day)."""

from __future__ import annotations

from pathlib import Path

import typer

from pacsflow.cli.app import GiveUpOption, PlanOnlyOption, WorkersOption, app, errors_to_exit, start_run


@app.command()
@errors_to_exit
def retrieve(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="DICOM node: a configured name or AET@host:port"),
    to: str = typer.Option(
        ..., "--to", help="folder (PatientID/StudyUID/SeriesUID/SOPUID.dcm) or Orthanc server"
    ),
    patients: Path | None = typer.Option(
        None, "--patients", help="file of PatientIDs: one per line, or a CSV with a PatientID or UHID column"
    ),
    select: str | None = typer.Option(
        None,
        "--select",
        help="MODULE:FUNCTION or FILE.py:FUNCTION, called with each patient's attributes: keep it if true",
    ),
    from_date: str | None = typer.Option(None, "--from-date", help="studies from this date (2024-01-31)"),
    to_date: str | None = typer.Option(None, "--to-date", help="studies up to this date"),
    modality: list[str] = typer.Option(None, "--modality", help="only series of this modality (repeatable)"),
    method: str = typer.Option("move", "--method", help="move (to our storage SCP on --port) or get"),
    aet: str | None = typer.Option(None, "--aet", help="our AE title [aet in pacsflow.toml]"),
    port: int | None = typer.Option(
        None, "--port", help="with move: our storage SCP's port, known to the node [port in pacsflow.toml]"
    ),
    rate: str | None = typer.Option(None, "--rate", help="at most this many requests to the node: 700/min"),
    per_patient_zip: Path | None = typer.Option(
        None, "--per-patient-zip", help="also one ZIP per patient, as soon as its series are in"
    ),
    delimiter: str | None = typer.Option(
        None, "--delimiter", help="between PatientID and series count in ZIP names [__seriesCount]"
    ),
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Retrieve patients' series from a DICOM node (PACS) into a folder or an Orthanc, as one run.

    Patients come from --patients, or from a C-FIND of the studies in the date range (and modalities),
    picked by --select; then their studies and series are found, each series is moved (or got) and its
    instance count checked against the node's: a short series is asked for again, then reported
    incomplete. Every request shares one --rate; a node that is down is waited for (--give-up-after).

    Example: pacsflow retrieve --from pacs --to images/ --from-date 2024-01-01 --to-date 2024-01-31
    Example: pacsflow retrieve --from pacs --to dcm/ --patients ids.csv --rate 700/min --per-patient-zip zips/
    Example: pacsflow retrieve --from PACS@10.0.0.5:104 --to main --method get --modality CT
    """
    params = {
        "from": source,
        "to": to,
        "patient_list": str(patients.resolve()) if patients else None,
        "select": select,
        "from_date": from_date,
        "to_date": to_date,
        "modalities": modality or None,
        "method": method,
        "aet": aet,
        "port": port,
        "rate": rate,
        "per_patient_zip": str(per_patient_zip.resolve()) if per_patient_zip else None,
        "delimiter": delimiter,
    }
    start_run(ctx, "retrieve", params, workers, plan_only, give_up_after)


@app.command()
@errors_to_exit
def migrate(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="DICOM node: a configured name or AET@host:port"),
    to: str = typer.Option(..., "--to", help="Orthanc server; the node must know its AE title"),
    from_date: str = typer.Option(..., "--from-date", help="first day (2024-01-31)"),
    to_date: str = typer.Option(..., "--to-date", help="last day"),
    oldest_first: bool = typer.Option(False, "--oldest-first", help="start at --from-date [newest first]"),
    via: str = typer.Option(
        "orthanc", "--via", help="orthanc (the Orthanc moves from the node) or dicom (our C-MOVE to it)"
    ),
    aet: str | None = typer.Option(None, "--aet", help="our AE title [aet in pacsflow.toml]"),
    rate: str | None = typer.Option(None, "--rate", help="at most this many requests to the node: 700/min"),
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Migrate a date range of studies from a DICOM node into an Orthanc, day by day.

    Each day's studies are found with a C-FIND; each study the Orthanc does not hold whole is sent by the
    node straight to the Orthanc (its own C-MOVE, or ours with --via dicom), then counted there against
    the node's count: a short study is reported incomplete. A rerun moves only what is missing. Set
    `window` in pacsflow.toml to run only at night and at weekends.

    Example: pacsflow migrate --from old-pacs --to main --from-date 2000-01-01 --to-date 2019-12-31
    Example: pacsflow migrate --from pacs --to main --from-date 2024-01-01 --to-date 2024-01-31 --oldest-first
    """
    params = {
        "from": source,
        "to": to,
        "from_date": from_date,
        "to_date": to_date,
        "order": "oldest-first" if oldest_first else "newest-first",
        "via": via,
        "aet": aet,
        "rate": rate,
    }
    start_run(ctx, "migrate", params, workers, plan_only, give_up_after)
