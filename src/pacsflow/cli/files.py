"""Commands that read or write files: populate, upload, download."""

from __future__ import annotations

from pathlib import Path

import typer

from pacsflow.cli.app import (
    AccessionOption,
    AnonymizeOption,
    BurnedInOption,
    GiveUpOption,
    LabelOption,
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
    start_run,
)
from pacsflow.errors import ConfigError


@app.command()
@errors_to_exit
def populate(
    ctx: typer.Context,
    to: str | None = typer.Option(None, "--to", help="Orthanc server (name or URL) to load into"),
    out: Path | None = typer.Option(None, "--out", help="folder to write files into"),
    patients: int = typer.Option(1, "--patients", min=1, help="patients to make"),
    studies: int = typer.Option(1, "--studies", min=1, help="studies per patient"),
    series: int = typer.Option(1, "--series", min=1, help="series per study"),
    instances: int = typer.Option(1, "--instances", min=1, help="instances per series"),
    seed: int = typer.Option(0, "--seed", help="same seed, same data"),
    pixels: int = typer.Option(64, "--pixels", min=8, max=4096, help="image rows and columns (16-bit)"),
    bad_files: bool = typer.Option(False, "--bad-files", help="also write broken files (with --out)"),
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Generate synthetic studies (deterministic) into a folder or a server.

    Example: pacsflow populate --to main --patients 10 --series 3 --instances 50 --seed 7
    """
    shape = {
        "patients": patients,
        "studies": studies,
        "series": series,
        "instances": instances,
        "pixels": pixels,
        "seed": seed,
    }
    params = {"to": to, "out": str(out.resolve()) if out else None, "shape": shape, "bad_files": bad_files}
    start_run(ctx, "populate", params, workers, plan_only, give_up_after)


@app.command()
@errors_to_exit
def upload(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(None, help="files, folders (recursive) and ZIP/TAR archives"),
    to: str = typer.Option(..., "--to", help="Orthanc server (name or URL)"),
    roster: Path | None = typer.Option(None, "--roster", help="roster CSV whose rows name patient folders"),
    root: Path | None = typer.Option(
        None, "--root", help="folder holding the roster's patient folders (needed with --roster)"
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="roster rows per batch (needed with --roster)"
    ),
    where: list[str] = typer.Option(None, "--where", help="COLUMN=VALUE a roster row must have (repeatable)"),
    status_column: str = typer.Option("Uploaded", "--status-column", help="roster column set to 1 when done"),
    id_column: str = typer.Option("UHID", "--id-column", help="roster column naming the patient folder"),
    errors: Path | None = typer.Option(
        None, "--errors", help="errors CSV [default: Logs/UHID error/output.csv]"
    ),
    csv_file: Path | None = typer.Option(None, "--csv", help="CSV of values to write into the DICOM (join)"),
    csv_key: str | None = typer.Option(None, "--csv-key", help="its key column: PatientID, or the roster ID"),
    label: str | None = typer.Option(None, "--label", help="Orthanc label for every study (Orthanc 1.12+)"),
    anonymize: bool = AnonymizeOption,
    option: list[str] = ProfileOption,
    allow_burned_in: bool = BurnedInOption,
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Upload DICOM files, folders and archives, or a roster CSV's patient folders in batches.

    Example: pacsflow upload scans/ export.zip --to main --workers 8
    Example: pacsflow upload --roster Final.csv --root /data/patients --to main --batch-size 20
    Example: pacsflow upload scans/ --to research --anonymize
    """
    common = {
        "to": to,
        "label": label,
        "csv": str(csv_file.resolve()) if csv_file else None,
        "csv_key": csv_key,
        **deidentify_params(anonymize, option, allow_burned_in),
    }
    if roster is None:
        if root or batch_size or where or errors:
            raise ConfigError("--root, --batch-size, --where and --errors go with --roster")
        if not paths:
            raise ConfigError("name the files, folders or archives to upload, or give --roster")
        params = {**common, "paths": [str(p.resolve()) for p in paths]}
        start_run(ctx, "upload", params, workers, plan_only, give_up_after)
        return
    if paths:
        raise ConfigError("give either paths or --roster, not both")
    params = {
        **common,
        "roster": str(roster.resolve()),
        "root": str(root.resolve()) if root else None,
        "batch_size": batch_size,
        "where": where or [],
        "status_column": status_column,
        "id_column": id_column,
        **({"errors": str(errors)} if errors else {}),  # else the model's default
    }
    start_run(ctx, "roster-upload", params, workers, plan_only, give_up_after)


@app.command()
@errors_to_exit
def download(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="Orthanc server"),
    out: Path | None = typer.Option(
        None, "--out", help="folder: PatientID/Date_Description_StudyUID/Number_Description/Number_SOPUID.dcm"
    ),
    zip_file: Path | None = typer.Option(
        None, "--zip", help="one ZIP file, same layout, stored entries (written as FILE.part, then renamed)"
    ),
    per_patient_zip: Path | None = typer.Option(
        None, "--per-patient-zip", help="folder of one ZIP per patient: <PatientID>__seriesCount<N>.zip"
    ),
    delimiter: str | None = typer.Option(
        None,
        "--delimiter",
        help="between PatientID and series count in per-patient ZIP names [__seriesCount]",
    ),
    study: list[str] = StudyOption,
    accession: list[str] = AccessionOption,
    patient: list[str] = PatientOption,
    query: list[str] = QueryOption,
    label: list[str] = LabelOption,
    anonymize: bool = AnonymizeOption,
    option: list[str] = ProfileOption,
    allow_burned_in: bool = BurnedInOption,
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Download studies (all of them, or those chosen) into a folder tree, one ZIP, or one ZIP per patient.

    A rerun fetches only what is missing or differs from the server (size and MD5); a patient who gained
    series gets a new ZIP, and only then is the old one removed. Every series' count is checked at the end.

    Example: pacsflow download --from main --out export/
    Example: pacsflow download --from main --zip export.zip --query StudyDate=20240101-20241231
    Example: pacsflow download --from main --per-patient-zip zips/ --query Modality=CT
    Example: pacsflow download --from main --out export/ --patient PF001 --patient PF002
    Example: pacsflow download --from main --out research/ --anonymize
    """
    params = {
        "from": source,
        "out": str(out.resolve()) if out else None,
        "zip": str(zip_file.resolve()) if zip_file else None,
        "per_patient_zip": str(per_patient_zip.resolve()) if per_patient_zip else None,
        "delimiter": delimiter,
        "studies": study or None,
        "accessions": accession or None,
        "patients": patient or None,
        "query": parse_query(query),
        "labels": label or None,
        **deidentify_params(anonymize, option, allow_burned_in),
    }
    start_run(ctx, "download", params, workers, plan_only, give_up_after)
