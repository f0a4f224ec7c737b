"""Commands that pull images from DICOM nodes: retrieve (C-FIND, then C-MOVE or C-GET per series)."""

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
