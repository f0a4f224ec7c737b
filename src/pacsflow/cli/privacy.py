"""Commands of de-identification: anonymize (local files, verify, a new secret) and the mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pacsflow.cli.app import (
    AccessionOption,
    BurnedInOption,
    GiveUpOption,
    PatientOption,
    PlanOnlyOption,
    ProfileOption,
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

mapping_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="The mapping of originals to pseudonyms (in the ledger)."
    "\n\nExample: pacsflow mapping export mapping.csv",
)
app.add_typer(mapping_app, name="mapping")


@app.command()
@errors_to_exit
def anonymize(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(None, help="files, folders (recursive) and ZIP/TAR archives"),
    out: Path | None = typer.Option(None, "--out", help="folder for the de-identified tree"),
    option: list[str] = ProfileOption,
    allow_burned_in: bool = BurnedInOption,
    pseudonym: str | None = typer.Option(
        None, "--pseudonym", help="pseudonym format: ANON-{n:06d} (counter) or ANON-{hash} (keyed)"
    ),
    on: str | None = typer.Option(
        None, "--on", help="Orthanc server: make de-identified copies of its studies"
    ),
    study: list[str] = StudyOption,
    accession: list[str] = AccessionOption,
    patient: list[str] = PatientOption,
    query: list[str] = QueryOption,
    every: bool = typer.Option(False, "--all", help="with --on: every study (not already a copy)"),
    delete_original: bool = typer.Option(
        False, "--delete-original", help="with --on: delete each original once its copy is verified"
    ),
    csv_file: Path | None = typer.Option(
        None, "--csv", help="CSV by original PatientID: its PatientID column gives the pseudonym"
    ),
    csv_key: str | None = typer.Option(None, "--csv-key", help="its key column (the original PatientID)"),
    verify: bool = typer.Option(
        False, "--verify", help="check de-identified files (with --on: studies) instead; exit 1 if not clean"
    ),
    new_secret: bool = typer.Option(False, "--new-secret", help="print a new project secret and exit"),
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """De-identify DICOM (PS3.15 Basic Profile and options) with keyed pseudonyms; verify the result.

    Example: pacsflow anonymize scans/ export.zip --out clean/
    Example: pacsflow anonymize --on main --all
    Example: pacsflow anonymize --on main --patient PF001 --delete-original
    Example: pacsflow anonymize scans/ --out clean/ --csv pseudonyms.csv --csv-key MRN
    Example: pacsflow anonymize --verify clean/
    Example: pacsflow anonymize --verify --on main --all
    Example: pacsflow anonymize --new-secret
    """
    if new_secret:
        secret = session(ctx).new_secret()
        typer.echo(
            "# put this in pacsflow.toml (or PACSFLOW_ANONYMIZE__SECRET); keep it as safe as the mapping:\n"
            f'[anonymize]\nsecret = "{secret}"'
        )
        return
    selection = {
        "studies": study or None,
        "accessions": accession or None,
        "patients": patient or None,
        "query": parse_query(query),
    }
    if on is not None:
        if paths or out:
            raise ConfigError("--on SERVER works on the server's studies: give no paths or --out")
        if verify:
            _verify_server(ctx, on, selection, every)
            return
        params = {
            "from": on,
            **selection,
            "all": every,
            "delete_original": delete_original,
            **_join(csv_file, csv_key),
            "options": option or None,
            "allow_burned_in": allow_burned_in,
            "pseudonym": pseudonym,
        }
        start_run(ctx, "anonymize-copy", params, workers, plan_only, give_up_after)
        return
    if any(selection.values()) or every or delete_original:
        raise ConfigError(
            "--study, --patient, --accession, --query, --all and --delete-original go with --on"
        )
    if not paths:
        raise ConfigError("name the files, folders or archives to de-identify (or --on SERVER, or --verify)")
    if verify:
        _verify(ctx, paths)
        return
    if out is None:
        raise ConfigError("give --out DIR: the folder for the de-identified files")
    params = {
        "paths": [str(p.resolve()) for p in paths],
        "out": str(out.resolve()),
        **_join(csv_file, csv_key),
        "options": option or None,
        "allow_burned_in": allow_burned_in,
        "pseudonym": pseudonym,
    }
    start_run(ctx, "anonymize", params, workers, plan_only, give_up_after)


def _join(csv_file: Path | None, csv_key: str | None) -> dict[str, str | None]:
    return {"csv": str(csv_file.resolve()) if csv_file else None, "csv_key": csv_key}


def _verify(ctx: typer.Context, paths: list[Path]) -> None:
    _report(session(ctx).verify_files(paths))


def _verify_server(ctx: typer.Context, server: str, selection: dict[str, object], every: bool) -> None:
    if not every and not any(selection.values()):
        raise ConfigError("give --study, --patient, --accession or --query, or --all")
    _report(session(ctx).verify_server(server, selection))


def _report(report: Any) -> None:
    """The verifier's findings, one line each; exit status 1 when there are any."""
    for line in report.lines(limit=200):
        typer.echo(line)
    if report.ok:
        typer.echo(f"verified {report.files} files: nothing identifying found")
        return
    typer.echo(
        f"pacsflow: error: {len(report.findings)} problems in {report.files} files de-identified", err=True
    )
    raise typer.Exit(1)


@mapping_app.command("export")
@errors_to_exit
def mapping_export(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="CSV to write (mode 0600: it holds identities)"),
    format: str = typer.Option(
        "mapping", "--format", help="mapping (every column), uid-pairs or patient-pairs (old,new)"
    ),
) -> None:
    """Export the mapping as a CSV.

    Example: pacsflow mapping export mapping.csv
    Example: pacsflow mapping export uids.csv --format uid-pairs
    """
    count = session(ctx).mapping_export(file, format)
    typer.echo(f"wrote {count} rows to {file}")


@mapping_app.command("check")
@errors_to_exit
def mapping_check(ctx: typer.Context) -> None:
    """Look for conflicts: one original with two pseudonyms, one pseudonym for two originals, duplicates.

    Example: pacsflow mapping check
    """
    pf = session(ctx)
    found = pf.mapping_check()
    for conflict in found:
        shown = f" ({', '.join(conflict.values)})" if pf.log_phi and conflict.values else ""
        typer.echo(f"{conflict.kind}: {conflict.message}{shown}")
    if found:
        typer.echo(
            f"pacsflow: error: {len(found)} conflicts in the mapping (--log-phi shows the values)", err=True
        )
        raise typer.Exit(1)
    typer.echo("the mapping is consistent: one pseudonym per patient, one new UID per original")


@mapping_app.command("lookup")
@errors_to_exit
def mapping_lookup(
    ctx: typer.Context,
    value: str = typer.Argument(..., help="a pseudonym, a new UID or a new accession number"),
) -> None:
    """Re-identify (for an authorised user): the originals behind a pseudonym or a new UID.

    Example: pacsflow mapping lookup ANON-3F2A9C0D41E7B655
    """
    found = session(ctx).mapping_lookup(value)
    if not found:
        typer.echo("pacsflow: error: not in the mapping", err=True)
        raise typer.Exit(1)
    for row in found:
        typer.echo("  ".join(f"{key}={value}" for key, value in row.items() if value not in (None, "")))
