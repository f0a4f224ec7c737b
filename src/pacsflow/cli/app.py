"""The typer application, its global options and what every command shares: errors, signals, reports.

Only typer and light pacsflow modules are imported here: `pacsflow --help` must start at once. Each
command imports the service layer (pacsflow.api) when it runs.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from pacsflow.errors import ConfigError, PacsflowError, public_text
from pacsflow.status import EXIT_USAGE

if TYPE_CHECKING:
    from pacsflow.api import Pacsflow
    from pacsflow.engine import RunResult

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich costs more than the whole start-up
    help="Upload, transfer, download and check medical images on Orthanc servers; every run is resumable.",
)
run_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect one run.")
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
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
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
    """The run's closing lines (stdout), its error and what to do next (stderr); its exit status."""
    counts = result.counts
    parts = [f"{counts.get(s, 0)} {s}" for s in ("done", "skipped", "failed") if counts.get(s)]
    pending = counts.get("pending", 0) + counts.get("running", 0)
    if pending:
        parts.append(f"{pending} not done")
    rate = f" ({result.bytes / 1e6 / result.elapsed:.1f} MB/s)" if result.elapsed > 0 and result.bytes else ""
    typer.echo(
        f"run {result.run_id}: {result.status}; {', '.join(parts) or 'no items'}; "
        f"{result.bytes / 1e6:.1f} MB in {result.elapsed:.1f}s{rate}"
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
            f"run {result.run_id}: planned {result.counts.get('pending', 0)} items; work it with "
            f"`pacsflow resume {result.run_id}` or `pacsflow worker`"
        )
        raise typer.Exit(0)
    stop = threading.Event()
    with stop_on_signals(stop):
        result = pacsflow.start(operation, params, workers=workers, give_up_after=give_up_after, stop=stop)
    raise typer.Exit(report(result))


def parse_query(conditions: list[str] | None) -> dict[str, str] | None:
    """--query PatientID=PF* StudyDate=20200101-20201231 -> Orthanc's /tools/find query."""
    query = {}
    for condition in conditions or []:
        tag, sep, value = condition.partition("=")
        if not sep or not tag.strip():
            raise ConfigError(
                f"--query {condition!r}: write TAG=VALUE, e.g. PatientID=PF* or StudyDate=2020-"
            )
        query[tag.strip()] = value.strip()
    return query or None


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
CredentialsOption = typer.Option(
    None,
    "--credentials",
    help="URL with user:password of a server the run names by URL (runs never store passwords)",
)
