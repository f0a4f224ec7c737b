"""The typer application, its global options and what every command shares: errors, signals, reports.

Only typer and light pacsflow modules are imported here: `pacsflow --help` must start at once. Each
command imports the service layer (pacsflow.api) when it runs.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from pacsflow.cli.conventions import PacsflowGroup
from pacsflow.errors import PacsflowError, public_text
from pacsflow.logs import configure_logging
from pacsflow.status import EXIT_USAGE
from pacsflow.wording import plural

if TYPE_CHECKING:
    from pacsflow.api import Pacsflow
    from pacsflow.engine import RunResult

app = typer.Typer(
    cls=PacsflowGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich costs more than the whole start-up
    help="Upload, transfer, download and check medical images on Orthanc servers; every run is resumable."
    "\n\nExample: pacsflow check\nExample: pacsflow upload scans/ --to main -q"
    "\n\nGlobal options (-c, --ledger, -v, -q, --log-phi) may also follow the command.",
)
run_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Inspect one run.\n\nExample: pacsflow run show last --failed",
)
app.add_typer(run_app, name="run")
log = logging.getLogger("pacsflow")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Options:
    """Global options, and the service-layer session made on first use."""

    config: Path | None = None
    ledger: str | None = None
    quiet: bool = False
    log_phi: bool = False
    _session: Pacsflow | None = field(default=None, repr=False)

    def session(self) -> Pacsflow:
        """The command's one Pacsflow session (settings, the process's one ledger)."""
        if self._session is None:
            from pacsflow.api import Pacsflow
            from pacsflow.progress import make_progress

            self._session = Pacsflow(
                config=self.config,
                ledger=self.ledger,
                log_phi=self.log_phi,
                progress=lambda: make_progress(self.quiet),
            )
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


_current: Options | None = None  # this command's global options, for the error handler


def options(ctx: typer.Context) -> Options:
    return ctx.find_root().obj


def session(ctx: typer.Context) -> Pacsflow:
    return options(ctx).session()


def _log_phi() -> bool:
    """Whether this command may show patient-derived values (--log-phi or log_phi = true)."""
    if _current is None:
        return False
    return _current._session.log_phi if _current._session is not None else _current.log_phi


def errors_to_exit(fn: F) -> F:
    """Turn pacsflow errors into one line on stderr and exit status 2 (fatal) or 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PacsflowError as exc:
            typer.echo(f"pacsflow: error: {public_text(exc, _log_phi())}", err=True)
            raise typer.Exit(EXIT_USAGE if exc.fatal else 1) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from pacsflow import __version__

        typer.echo(f"pacsflow {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", envvar="PACSFLOW_CONFIG", help="pacsflow.toml"
    ),
    ledger: str | None = typer.Option(None, "--ledger", help="ledger database URL (default: SQLite)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, warnings only"),
    log_phi: bool = typer.Option(False, "--log-phi", help="allow paths and patient IDs in logs"),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    configure_logging(verbose=verbose, quiet=quiet, log_phi=log_phi)
    global _current
    ctx.obj = _current = Options(config=config, ledger=ledger, quiet=quiet, log_phi=log_phi)
    ctx.call_on_close(ctx.obj.close)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: finish in-flight items and stop; a second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("stopping after the items in flight (again to abort)...")
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def report(result: RunResult) -> int:
    """The run's closing lines (stdout), its error and what to do next (stderr); its exit status.

    Counts are of what the run counts for people (roster rows, else items) across the whole run; the
    rate is of this process's own bytes over its own time, so a resumed run is not credited with what
    an earlier process sent (a finished run resumed once printed 19312.7 MB/s).
    """
    counts = result.shown_counts
    parts = [f"{counts.get(s, 0)} {s}" for s in ("done", "skipped", "failed") if counts.get(s)]
    pending = counts.get("pending", 0) + counts.get("running", 0)
    if pending:
        parts.append(f"{pending} not done")
    unit = f"{result.unit}: " if result.unit_counts is not None else ""
    typer.echo(
        f"run {result.run_id}: {result.status}; {unit}{', '.join(parts) or 'no ' + result.unit}; "
        f"{_volume(result)}"
    )
    for line in result.lines:
        typer.echo(f"  {line}")
    if result.error is not None:
        typer.echo(f"pacsflow: error: {public_text(result.error, _log_phi())}", err=True)
    if counts.get("failed"):
        typer.echo(f"  see the failures: pacsflow run show {result.run_id} --failed", err=True)
    if result.status in ("stopped", "running") and pending:
        typer.echo(f"  continue with: pacsflow resume {result.run_id}", err=True)
    return result.exit_code


def _volume(result: RunResult) -> str:
    """How much the run moved and how fast this process moved its part: '52.4 MB in 3.1s (16.9 MB/s)',
    or for a run that earlier processes worked too '52.4 MB in all; 10.2 MB of it now in 0.6s (...)'."""
    here, total, seconds = result.bytes_here, result.bytes, result.elapsed
    rate = f" ({here / 1e6 / seconds:.1f} MB/s)" if seconds > 0 and here else ""
    if here >= total:
        return f"{total / 1e6:.1f} MB in {seconds:.1f}s{rate}"
    return f"{total / 1e6:.1f} MB in all; {here / 1e6:.1f} MB of it now in {seconds:.1f}s{rate}"


def start_run(
    ctx: typer.Context,
    operation: str,
    params: dict[str, Any],
    workers: int | None,
    plan_only: bool,
    give_up_after: str | None = None,
) -> None:
    """Start a run of OPERATION through the service layer, report it, exit with its status."""
    pacsflow = session(ctx)
    if plan_only:
        result = pacsflow.start(
            operation, params, workers=workers, plan_only=True, give_up_after=give_up_after
        )
        typer.echo(
            f"run {result.run_id}: planned {plural(result.counts.get('pending', 0), 'item')}; work it with "
            f"`pacsflow resume {result.run_id}` or `pacsflow worker`"
        )
        raise typer.Exit(0)
    stop = threading.Event()
    with stop_on_signals(stop):
        result = pacsflow.start(operation, params, workers=workers, give_up_after=give_up_after, stop=stop)
    raise typer.Exit(report(result))


def parse_query(conditions: list[str] | None) -> dict[str, str] | None:
    """--query PatientID=PF* StudyDate=2020-01-01-2020-12-31 -> a checked /tools/find query (tags against
    the DICOM dictionary, dates as DICOM writes them); see pacsflow.selection. Raises ConfigError."""
    from pacsflow.selection import parse_query as checked_query  # loads pydicom's dictionary: not at start-up

    return checked_query(conditions)


# how studies are chosen (pacsflow.selection): transfer and download, later delete and anonymize
StudyOption = typer.Option(
    None, "--study", help="Orthanc study ID or StudyInstanceUID (repeatable; default: all)"
)
AccessionOption = typer.Option(None, "--accession", help="AccessionNumber (repeatable)")
PatientOption = typer.Option(None, "--patient", help="PatientID: all its studies (repeatable)")
LabelOption = typer.Option(
    None, "--label", help="Orthanc label the studies carry (repeatable: all of them; Orthanc 1.12+)"
)
QueryOption = typer.Option(
    None, "--query", help="TAG=VALUE the studies match (repeatable; * ok); not with the three above"
)
WorkersOption = typer.Option(
    None, "--workers", "-w", min=1, max=256, help="parallel workers (default: config)"
)
PlanOnlyOption = typer.Option(
    False, "--plan-only", help="only list the items into the ledger; work them later"
)
GiveUpOption = typer.Option(
    None,
    "--give-up-after",
    help="stop (exit 1, all pending) when a server stays unreachable this long, e.g. 90s, 30m, 2h "
    "[default: config give_up_after, 1h]",
)
# de-identification on the way (upload, transfer, download): see pacsflow.anonymize
AnonymizeOption = typer.Option(
    False, "--anonymize", help="de-identify each instance on the way, never sent or written in clear"
)
ProfileOption = typer.Option(
    None, "--option", help="PS3.15 option, e.g. clean-descriptors (repeatable; replaces [anonymize] options)"
)
BurnedInOption = typer.Option(
    False, "--allow-burned-in", help="also take instances that may show burned-in text (check their pixels)"
)


def deidentify_params(anonymize: bool, option: list[str] | None, allow_burned_in: bool) -> dict[str, Any]:
    """The parameters `--anonymize`, `--option` and `--allow-burned-in` give a run. Raises ConfigError
    for the last two without the first."""
    if not anonymize:
        if option or allow_burned_in:
            from pacsflow.errors import ConfigError

            raise ConfigError("--option and --allow-burned-in go with --anonymize")
        return {}
    return {"anonymize": True, "options": option or None, "allow_burned_in": allow_burned_in}


CredentialsOption = typer.Option(
    None,
    "--credentials",
    help="URL with user:password of a server the run names by URL (runs never store passwords)",
)
