"""The `pacsflow` command line: one thin command per operation (typer)."""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import typer

from pacsflow.config import Settings, load_settings, parse_duration, redact_url, scrub_params
from pacsflow.engine import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Engine, RunResult, describe_run
from pacsflow.errors import ConfigError, PacsflowError, Unauthorized, public_text
from pacsflow.heartbeat import Heartbeat
from pacsflow.ledger import FAILED, Ledger
from pacsflow.ops.base import Operation
from pacsflow.outages import Outages
from pacsflow.progress import make_progress

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Upload, transfer, download and check medical images on Orthanc servers; every run is resumable.",
)
run_app = typer.Typer(no_args_is_help=True, help="Inspect one run.")
app.add_typer(run_app, name="run")
log = logging.getLogger("pacsflow")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Options:
    """Global options, and settings loaded on first use."""

    config: Path | None = None
    ledger: str | None = None
    quiet: bool = False
    log_phi: bool = False
    _settings: Settings | None = field(default=None, repr=False)
    _ledger: Ledger | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        if self._settings is None:
            overrides: dict[str, Any] = {"ledger": self.ledger}
            if self.log_phi:
                overrides["log_phi"] = True
            self._settings = load_settings(self.config, **overrides)
        return self._settings

    def open_ledger(self) -> Ledger:
        """The process's one ledger (one connection pool), however many runs and follower cycles use it."""
        if self._ledger is None:
            self._ledger = Ledger(self.settings().ledger)
        return self._ledger

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


def _options(ctx: typer.Context) -> Options:
    return ctx.find_root().obj


_current: Options | None = None  # this command's global options, for the error handler


def _log_phi() -> bool:
    """Whether this command may show patient-derived values (--log-phi or log_phi = true)."""
    options = _current
    if options is None:
        return False
    return options.log_phi or bool(options._settings is not None and options._settings.log_phi)


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


def _engine(
    options: Options,
    workers: int | None,
    window: str | None = None,
    stop: threading.Event | None = None,
    give_up_after: str | None = None,
    **engine_options: Any,
) -> Engine:
    settings = options.settings()
    return Engine(
        options.open_ledger(),
        settings,
        workers=workers,
        progress=make_progress(options.quiet),
        window=window,
        stop=stop,
        give_up_after=parse_duration(give_up_after) if give_up_after else None,
        **engine_options,
    )


@contextmanager
def heartbeat(options: Options) -> Iterator[None]:
    """Ping the configured heartbeat URL when the command starts, and on its success (exit 0) or failure."""
    beat = Heartbeat(options.settings().heartbeat_url)
    beat.start()
    succeeded = False
    try:
        yield
        succeeded = True
    except typer.Exit as ending:
        succeeded = ending.exit_code == EXIT_OK
        raise
    finally:
        beat.success() if succeeded else beat.fail()
        beat.close()


def remember_credentials(settings: Settings, urls: list[str] | None) -> None:
    """--credentials URL: the user and password of a server a stored run names by URL only."""
    for url in urls or []:
        if settings.public_spec(url) == url:
            raise ConfigError(f"--credentials {redact_url(url)!r}: give a URL with user:password@")


def _resume_hint(run_ref: str, exc: Unauthorized) -> ConfigError:
    return ConfigError(
        f"{exc.reason}; a run stores servers given as URLs without their password: give it again with "
        f"`pacsflow resume {run_ref} --credentials http://USER:PASSWORD@HOST:PORT`, or name the server "
        "in pacsflow.toml"
    )


def _report(result: RunResult) -> int:
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
    if counts.get(FAILED):
        typer.echo(f"  see the failures: pacsflow run show {result.run_id} --failed", err=True)
    if result.status in ("stopped", "running") and pending:
        typer.echo(f"  continue with: pacsflow resume {result.run_id}", err=True)
    return result.exit_code


def start_run(
    ctx: typer.Context,
    op_class: type[Operation],
    params: dict[str, Any],
    workers: int | None,
    plan_only: bool,
    give_up_after: str | None = None,
) -> None:
    """Plan and work a new run of an operation, then exit with its status.

    Servers given as URLs with a password are stored without it (the ledger may be a shared database):
    the password stays in this process's memory only.
    """
    options = _options(ctx)
    settings = options.settings()
    params = scrub_params(settings, {**params, "workers": workers or settings.workers})
    engine = _engine(options, workers, give_up_after=give_up_after)
    operation = op_class(settings, params)
    if plan_only:
        result = engine.start(operation, plan_only=True)
        typer.echo(
            f"run {result.run_id}: planned {result.counts.get('pending', 0)} items; work it with "
            f"`pacsflow resume {result.run_id}` or `pacsflow worker`"
        )
        raise typer.Exit(EXIT_OK)

    with heartbeat(options), stop_on_signals(engine.stop):
        raise typer.Exit(_report(engine.start(operation)))


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


# -- commands -----------------------------------------------------------------------------------


@app.command()
@errors_to_exit
def check(
    ctx: typer.Context,
    targets: list[str] = typer.Argument(None, help="server or modality names/URLs (default: all configured)"),
) -> None:
    """Is every configured server and modality reachable, with which version, and does our login work?"""
    from pacsflow.checks import check_targets

    settings = _options(ctx).settings()
    lines, ok = check_targets(settings, targets or [])
    for line in lines:
        typer.echo(line)
    raise typer.Exit(EXIT_OK if ok else 1)


@app.command()
@errors_to_exit
def populate(
    ctx: typer.Context,
    to: str | None = typer.Option(None, "--to", help="Orthanc server (name or URL) to load into"),
    out: Path | None = typer.Option(None, "--out", help="folder to write files into"),
    patients: int = typer.Option(1, "--patients", min=1),
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
    """Generate synthetic studies (deterministic) into a folder or a server."""
    from pacsflow.ops.populate import Populate

    if (to is None) == (out is None):
        raise ConfigError("give exactly one of --to SERVER or --out DIR")
    shape = {
        "patients": patients,
        "studies": studies,
        "series": series,
        "instances": instances,
        "pixels": pixels,
        "seed": seed,
    }
    params = {"to": to, "out": str(out.resolve()) if out else None, "shape": shape, "bad_files": bad_files}
    start_run(ctx, Populate, params, workers, plan_only, give_up_after)


@app.command()
@errors_to_exit
def upload(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(None, help="files, folders (recursive) and ZIP/TAR archives"),
    to: str = typer.Option(..., "--to", help="Orthanc server (name or URL)"),
    roster: Path | None = typer.Option(None, "--roster", help="roster CSV whose rows name patient folders"),
    root: Path | None = typer.Option(None, "--root", help="folder holding the roster's patient folders"),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="roster rows per batch"),
    where: list[str] = typer.Option(None, "--where", help="COLUMN=VALUE a roster row must have (repeatable)"),
    status_column: str = typer.Option("Uploaded", "--status-column", help="roster column set to 1 when done"),
    id_column: str = typer.Option("UHID", "--id-column", help="roster column naming the patient folder"),
    errors: Path | None = typer.Option(
        None, "--errors", help="errors CSV [default: Logs/UHID error/output.csv]"
    ),
    csv_file: Path | None = typer.Option(None, "--csv", help="CSV of values to write into the DICOM (join)"),
    csv_key: str | None = typer.Option(None, "--csv-key", help="its key column: PatientID, or the roster ID"),
    label: str | None = typer.Option(None, "--label", help="Orthanc label for every study (Orthanc 1.12+)"),
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Upload DICOM files, folders and archives, or a roster CSV's patient folders in batches."""
    from pacsflow.ops.roster import DEFAULT_ERRORS, RosterUpload
    from pacsflow.ops.upload import Upload

    if (csv_file is None) != (csv_key is None):
        raise ConfigError("--csv and --csv-key go together")
    common = {
        "to": to,
        "label": label,
        "csv": str(csv_file.resolve()) if csv_file else None,
        "csv_key": csv_key,
    }
    if roster is None:
        if not paths:
            raise ConfigError("give files or folders to upload, or --roster")
        if root or batch_size or where or errors:
            raise ConfigError("--root, --batch-size, --where and --errors go with --roster")
        start_run(
            ctx,
            Upload,
            {**common, "paths": [str(p.resolve()) for p in paths]},
            workers,
            plan_only,
            give_up_after,
        )
        return
    if paths:
        raise ConfigError("give either paths or --roster, not both")
    if root is None or batch_size is None:
        raise ConfigError("--roster needs --root DIR and --batch-size N")
    conditions = {}
    for condition in where or []:
        column, sep, value = condition.partition("=")
        if not sep or not column.strip():
            raise ConfigError(f"--where {condition!r}: write COLUMN=VALUE")
        conditions[column.strip()] = value.strip()
    params = {
        **common,
        "roster": str(roster.resolve()),
        "root": str(root.resolve()),
        "batch_size": batch_size,
        "where": conditions,
        "status_column": status_column,
        "id_column": id_column,
        "errors": str((errors or DEFAULT_ERRORS).resolve()),
    }
    start_run(ctx, RosterUpload, params, workers, plan_only, give_up_after)


@app.command()
@errors_to_exit
def transfer(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="source Orthanc server"),
    destination: str = typer.Option(..., "--to", help="destination Orthanc server or DICOM MODALITY"),
    study: list[str] = typer.Option(None, "--study", help="Orthanc study ID (repeatable; default: all)"),
    query: list[str] = typer.Option(None, "--query", help="TAG=VALUE the studies match (repeatable; * ok)"),
    via: str | None = typer.Option(
        None,
        "--via",
        help="rest (default for a server), peer (the source sends), dicom (default for a MODALITY)",
    ),
    peer: str | None = typer.Option(None, "--peer", help="with --via peer: the source's name for the peer"),
    modality: str | None = typer.Option(
        None, "--modality", help="with --via dicom: the source's name for it"
    ),
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Copy studies to another server: only what is missing, each study verified afterwards."""
    from pacsflow.ops.transfer import Transfer

    if via not in (None, "rest", "peer", "dicom"):
        raise ConfigError(f"--via {via!r}: use rest, peer or dicom")
    if study and query:
        raise ConfigError("give --study or --query, not both")
    params = {
        "from": source,
        "to": destination,
        "studies": study or None,
        "query": parse_query(query),
        "via": via,
        "peer": peer,
        "modality": modality,
    }
    start_run(ctx, Transfer, params, workers, plan_only, give_up_after)


def _earlier_run(ledger: Ledger, operation: str, match: dict[str, Any]) -> str | None:
    """The newest run of OPERATION with these parameters: a follower started again continues it."""
    for run in ledger.runs(10_000):
        if run.operation == operation and all(run.params.get(key) == value for key, value in match.items()):
            return run.id
    return None


def follow_changes(
    options: Options,
    run_id: str,
    op_class: type[Any],
    items_of: Callable[[Any], Callable[[str], list[Any]]],
    change_type: str,
    *,
    workers: int | None,
    window: str | None,
    poll: float,
    stop: threading.Event,
    give_up_after: str | None,
) -> None:
    """Work a run from the source's change feed until stopped (clone --follow, forward)."""
    from pacsflow.pacing import TimeWindow
    from pacsflow.services.follower import ChangeFollower

    settings = options.settings()
    ledger = options.open_ledger()
    params = ledger.run(run_id).params
    alive = _Pulse(Heartbeat(settings.heartbeat_url))
    planner = op_class(settings, params)
    window = window or settings.window
    try:
        ChangeFollower(
            ledger,
            run_id,
            make_operation=lambda: op_class(settings, params),
            make_engine=lambda **engine_options: _engine(
                options, workers, window=window, stop=stop, give_up_after=give_up_after, **engine_options
            ),
            source=planner.source,
            stop=stop,
            poll=poll,
            window=TimeWindow(window) if window else None,
            items=items_of(planner),
            change_type=change_type,
            give_up_after=parse_duration(give_up_after) if give_up_after else settings.give_up_after,
            on_cycle=alive.cycle,
        ).run()
    finally:
        planner.close()
        alive.beat.close()


class _Pulse:
    """Heartbeats of a long follow: a failure ping when a cycle failed items, else a success ping at
    most once a minute (a monitor expects a sign of life from a service that never ends)."""

    EVERY = 60.0

    def __init__(self, beat: Heartbeat) -> None:
        self.beat = beat
        self.failed = 0
        self.last = 0.0

    def cycle(self, result: RunResult) -> None:
        failed = result.counts.get(FAILED, 0)
        if failed > self.failed:
            self.beat.fail()
        elif time.monotonic() - self.last >= self.EVERY:
            self.beat.success()
        else:
            return
        self.failed, self.last = failed, time.monotonic()


@app.command()
@errors_to_exit
def clone(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="source Orthanc server"),
    destination: str = typer.Option(..., "--to", help="destination Orthanc server"),
    follow: bool = typer.Option(False, "--follow", help="then keep copying new instances until stopped"),
    window: str | None = typer.Option(
        None, "--window", help="work only then, e.g. 'Mon-Fri 19:00-07:00, Sat-Sun'"
    ),
    poll: float = typer.Option(2.0, "--poll", min=0.1, help="seconds between looks at the change feed"),
    workers: int | None = WorkersOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Copy everything to another server; with --follow keep following the source's new instances.

    A clone of the same source and destination continues the earlier clone run: a crash or a stop loses
    nothing, and the change feed is read again from the last point whose changes were all done.
    """
    from pacsflow.ops.transfer import Clone, instance_item
    from pacsflow.services.follower import CHECKPOINT, last_change

    options = _options(ctx)
    settings = options.settings()
    source, destination = settings.public_spec(source), settings.public_spec(destination)
    params = {"from": source, "to": destination, "workers": workers or settings.workers}
    stop = threading.Event()
    engine = _engine(options, workers, window=window, stop=stop, give_up_after=give_up_after)
    earlier = _earlier_run(engine.ledger, "clone", {"from": source, "to": destination})
    with heartbeat(options), stop_on_signals(stop):
        if earlier:
            run_id = earlier
            log.info("continuing clone run %s", run_id)
            result = engine.resume(run_id)
        else:
            operation = Clone(settings, params)
            operation.preflight()
            params["start_change"] = last_change(operation.source)  # changes after this are followed
            result = engine.start(operation)
            run_id = result.run_id
        if engine.ledger.checkpoint(run_id, CHECKPOINT) is None:
            start = engine.ledger.run(run_id).params.get("start_change", 0)
            engine.ledger.set_checkpoint(run_id, CHECKPOINT, str(start))
        code = _report(result)
        if not follow or stop.is_set() or result.error is not None:
            raise typer.Exit(code)
        typer.echo(f"following the changes of {source} (Ctrl-C to stop)")
        follow_changes(
            options,
            run_id,
            Clone,
            lambda _: lambda change: [instance_item(change["ID"])],
            "NewInstance",
            workers=workers,
            window=window,
            poll=poll,
            stop=stop,
            give_up_after=give_up_after,
        )
    typer.echo(f"stopped following; continue with the same `pacsflow clone --follow` (run {run_id})")
    raise typer.Exit(EXIT_INTERRUPTED if stop.is_set() else EXIT_OK)


@app.command()
@errors_to_exit
def forward(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="source Orthanc server (e.g. an inbox)"),
    destinations: list[str] = typer.Option(..., "--to", help="destination server or DICOM node (repeatable)"),
    trigger: str = typer.Option(
        "stable-study", "--trigger", help="stable-study (whole studies) or new-instance (each at once)"
    ),
    window: str | None = typer.Option(None, "--window", help="work only then, e.g. 'Mon-Fri 19:00-07:00'"),
    poll: float = typer.Option(2.0, "--poll", min=0.1, help="seconds between looks at the change feed"),
    workers: int | None = WorkersOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Send each stable study to every destination, then delete it from the source once all hold it.

    A failure never deletes: the study stays on the source and is tried again with backoff.
    """
    from pacsflow.ops.transfer import Forward
    from pacsflow.services.follower import CHECKPOINT

    if trigger not in ("stable-study", "new-instance"):
        raise ConfigError(f"--trigger {trigger!r}: use stable-study or new-instance")
    options = _options(ctx)
    settings = options.settings()
    source = settings.public_spec(source)
    destinations = [settings.public_spec(spec) for spec in destinations]
    params = {
        "from": source,
        "to": list(destinations),
        "workers": workers or settings.workers,
        "trigger": trigger,
    }
    stop = threading.Event()
    engine = _engine(options, workers, window=window, stop=stop, give_up_after=give_up_after)
    earlier = _earlier_run(
        engine.ledger, "forward", {"from": source, "to": list(destinations), "trigger": trigger}
    )
    with heartbeat(options), stop_on_signals(stop):
        if earlier:
            run_id = earlier
            result = engine.resume(run_id)
        else:
            result = engine.start(Forward(settings, params))
            run_id = result.run_id
            engine.ledger.set_checkpoint(run_id, CHECKPOINT, "0")  # studies already waiting go too
        if result.error is not None:
            raise typer.Exit(_report(result))
        typer.echo(f"forwarding stable studies of {source} to {', '.join(destinations)} (Ctrl-C to stop)")
        change = "StableStudy" if trigger == "stable-study" else "NewInstance"
        follow_changes(
            options,
            run_id,
            Forward,
            lambda planner: planner.items_for,
            change,
            workers=workers,
            window=window,
            poll=poll,
            stop=stop,
            give_up_after=give_up_after,
        )
    typer.echo(f"stopped forwarding (run {run_id}); the same command continues it")
    raise typer.Exit(EXIT_INTERRUPTED if stop.is_set() else EXIT_OK)


@app.command()
@errors_to_exit
def compare(
    ctx: typer.Context,
    a: str = typer.Argument(..., metavar="A", help="Orthanc server, or DICOM node (name or AET@host:port)"),
    b: str = typer.Argument(..., metavar="B", help="Orthanc server, or DICOM node (name or AET@host:port)"),
    level: str = typer.Option("study", "--level", help="study, series or instance"),
    query: list[str] = typer.Option(None, "--query", help="TAG=VALUE to compare only part (repeatable)"),
    from_date: str | None = typer.Option(None, "--from-date", help="StudyDate from (YYYYMMDD)"),
    to_date: str | None = typer.Option(None, "--to-date", help="StudyDate to (YYYYMMDD)"),
    out: Path | None = typer.Option(None, "--out", help="write the differences to this CSV"),
    transfer_missing: bool = typer.Option(False, "--transfer-missing", help="copy what B lacks from A"),
    workers: int | None = WorkersOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """What A and B hold, side by side; exit 0 when they match, 1 when they differ."""
    from pacsflow.ops import compare as comparing
    from pacsflow.ops.servers import connect, preflight_node, preflight_server
    from pacsflow.ops.transfer import Transfer

    settings = _options(ctx).settings()
    a, b = settings.public_spec(a), settings.public_spec(b)
    conditions = parse_query(query) or {}
    if from_date or to_date:
        conditions["StudyDate"] = f"{from_date or ''}-{to_date or ''}"
    pool = workers or settings.workers

    def holdings(spec: str) -> dict[str, int]:
        if settings.is_modality(spec):
            node = settings.modality(spec)
            preflight_node(node, settings.aet)
            return comparing.node_holdings(node, settings.aet, level, conditions or None)
        with connect(settings, spec, pool) as server:
            preflight_server(server)
            return comparing.holdings(server, level, conditions or None)

    if transfer_missing and settings.is_modality(a):
        raise ConfigError("--transfer-missing copies from A: A must be an Orthanc server (B may be a node)")
    held_a, held_b = holdings(a), holdings(b)
    differences = comparing.compare(held_a, held_b, level)
    typer.echo(comparing.summary(differences, level, (len(held_a), len(held_b))))
    if out is not None:
        comparing.write_csv(out, differences)
        typer.echo(f"differences written to {out}")
    if not differences:
        raise typer.Exit(EXIT_OK)
    if transfer_missing:
        with connect(settings, a, pool) as left:
            missing = comparing.studies_to_copy(left, differences)
        if missing:
            start_run(ctx, Transfer, {"from": a, "to": b, "studies": missing}, workers, False, give_up_after)
    raise typer.Exit(1)


@app.command()
@errors_to_exit
def download(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="Orthanc server"),
    out: Path = typer.Option(..., "--out", help="folder: Patient/Study/Series/instance.dcm"),
    study: list[str] = typer.Option(None, "--study", help="Orthanc study ID (repeatable; default: all)"),
    workers: int | None = WorkersOption,
    plan_only: bool = PlanOnlyOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Download studies into a folder tree."""
    from pacsflow.ops.download import Download

    params = {"from": source, "out": str(out.resolve()), "studies": study or None}
    start_run(ctx, Download, params, workers, plan_only, give_up_after)


@app.command()
@errors_to_exit
def runs(ctx: typer.Context, limit: int = typer.Option(20, "--limit", "-n", min=1)) -> None:
    """List recent runs."""
    found = _options(ctx).open_ledger().runs(limit)
    if not found:
        typer.echo("no runs yet")
    for run in found:
        typer.echo(describe_run(run))


@run_app.command("show")
@errors_to_exit
def run_show(
    ctx: typer.Context,
    run_ref: str = typer.Argument(..., metavar="RUN", help="run ID, a unique prefix, or 'last'"),
    failed: bool = typer.Option(False, "--failed", help="list the failed items with their reasons"),
    limit: int = typer.Option(50, "--limit", "-n", min=1),
) -> None:
    """Show a run: its parameters, counts, and (with --failed) what failed and why."""
    from pacsflow.runview import show_run

    for line in show_run(_options(ctx).open_ledger(), run_ref, failed=failed, limit=limit):
        typer.echo(line)


@app.command()
@errors_to_exit
def resume(
    ctx: typer.Context,
    run_ref: str = typer.Argument(..., metavar="RUN", help="run ID, a unique prefix, or 'last'"),
    workers: int | None = WorkersOption,
    credentials: list[str] = CredentialsOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Continue a stopped or killed run where it left off (also joins a run another process works)."""
    options = _options(ctx)
    remember_credentials(options.settings(), credentials)
    engine = _engine(options, workers, give_up_after=give_up_after)
    with heartbeat(options):
        raise typer.Exit(_resume(engine, run_ref))


def _resume(engine: Engine, run_ref: str) -> int:
    with stop_on_signals(engine.stop):
        try:
            result = engine.resume(run_ref)
        except Unauthorized as exc:
            raise _resume_hint(run_ref, exc) from None
    return _report(result)


@app.command()
@errors_to_exit
def retry(
    ctx: typer.Context,
    run_ref: str = typer.Argument(..., metavar="RUN", help="run ID, a unique prefix, or 'last'"),
    workers: int | None = WorkersOption,
    credentials: list[str] = CredentialsOption,
    give_up_after: str | None = GiveUpOption,
) -> None:
    """Put a run's failed items back to pending and work them again."""
    options = _options(ctx)
    remember_credentials(options.settings(), credentials)
    engine = _engine(options, workers, give_up_after=give_up_after)
    run = engine.ledger.run(run_ref)
    count = engine.ledger.retry_failed(run.id)
    typer.echo(f"run {run.id}: {count} failed items put back")
    with heartbeat(options):
        raise typer.Exit(_resume(engine, run.id))


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
    """
    options = _options(ctx)
    if ledger:
        options.ledger = ledger
    remember_credentials(options.settings(), credentials)
    stop = threading.Event()
    shared = options.open_ledger()
    settings = options.settings()
    # one view of which remotes are down for all the runs this worker joins: an outage is reported
    # once, and a run waiting for it is left for a while so that the others go on meanwhile
    outages = Outages(parse_duration(give_up_after) if give_up_after else settings.give_up_after)
    beat = Heartbeat(settings.heartbeat_url)
    exit_code = EXIT_OK
    held_off: dict[str, tuple[float, float]] = {}  # run -> (not before, last delay)
    with stop_on_signals(stop):
        while not stop.is_set():
            now = time.monotonic()
            active = [run for run in shared.active_runs() if held_off.get(run.id, (0.0, 0.0))[0] <= now]
            if not active and once:
                break
            for run in active:
                if stop.is_set():
                    break
                log.info("joining run %s (%s, %d items left)", run.id, run.operation, run.remaining)
                beat.start()
                try:
                    # a new engine per run: its counters and failure state belong to that run
                    engine = _engine(options, workers, stop=stop, outages=outages, leave_when_waiting=True)
                    result = engine.resume(run.id)
                except PacsflowError as exc:  # this run cannot start here now; the others still can
                    beat.fail()
                    delay = min(600.0, 2 * held_off.get(run.id, (0.0, 7.5))[1])
                    held_off[run.id] = (float("inf") if once else time.monotonic() + delay, delay)
                    later = "" if once else f"; trying it again in {delay:.0f}s"
                    log.error("run %s: %s%s", run.id, public_text(exc, _log_phi()), later)
                    exit_code = max(exit_code, EXIT_USAGE if exc.fatal else 1)
                    continue
                code = _report(result)
                beat.success() if code == EXIT_OK else beat.fail()
                if result.waiting or result.gave_up:
                    # its remote is down: other runs first; back when the next probe is due
                    wait = 600.0 if result.gave_up else max(5.0, outages.seconds_to_next_probe())
                    held_off[run.id] = (float("inf") if once else time.monotonic() + wait, wait)
                else:
                    held_off.pop(run.id, None)
                exit_code = max(exit_code, code)
            if not any(held_off.get(run.id, (0.0, 0.0))[0] <= time.monotonic() for run in active):
                stop.wait(poll)
    beat.close()
    raise typer.Exit(exit_code)


@app.command()
@errors_to_exit
def demo(
    ctx: typer.Context,
    keep: bool = typer.Option(False, "--keep", help="leave the servers' data under .pacsflow/demo"),
) -> None:
    """Start two throwaway Orthancs, generate data, upload, transfer, download, and summarise."""
    from pacsflow.demo import run_demo

    raise typer.Exit(run_demo(Path(".pacsflow/demo"), keep=keep, quiet=_options(ctx).quiet))


def main() -> None:
    app()
