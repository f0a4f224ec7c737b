"""The service layer: what the CLI, the web app and Python users call to start, follow and manage runs.

Nothing here prints or parses command lines; everything that decides what happens lives here or below.

    from pacsflow.api import Pacsflow
    from pacsflow.events import ITEM_DONE

    with Pacsflow(config="pacsflow.toml") as pf:
        result = pf.start("transfer", {"from": "main", "to": "backup"},
                          handlers=[(ITEM_DONE, lambda event: print(event))])
        print(result.status, result.counts, result.lines)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from pacsflow.config import Settings, load_settings, parse_duration, redact_url, scrub_params
from pacsflow.engine import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Engine, RunResult
from pacsflow.errors import ConfigError, NoLedger, PacsflowError, Unauthorized, public_text
from pacsflow.events import ITEM_DONE, ITEM_FAILED, Event
from pacsflow.heartbeat import Heartbeat
from pacsflow.ledger import FAILED, Ledger, RunInfo
from pacsflow.ops.base import Operation, operation_class
from pacsflow.outages import Outages
from pacsflow.pacing import configure_limits
from pacsflow.progress import Progress, make_progress
from pacsflow.wording import plural

if TYPE_CHECKING:
    from pacsflow.services.scp import Received, StorageSCP

log = logging.getLogger("pacsflow")

#: (event type, handler) pairs, as pynetdicom's evt_handlers
Handlers = Sequence[tuple[Any, Callable[[Any], None]]]


@dataclass
class Followed:
    """How a clone or forward ended: the run, its first (catch-up) result, and whether it was stopped."""

    run_id: str
    first: RunResult
    stopped: bool = False
    #: the change feed was followed (False: the run stopped or failed at catch-up, or no --follow)
    following: bool = False
    #: what this call did, catch-up and follow together: its items by (kind, status) (a forward's
    #: "forward" and "delete" items, a clone's "instance" items...) and the bytes they moved
    items: Counter[tuple[str, str]] = field(default_factory=Counter)
    nbytes: int = 0

    def count(self, kind: str, *statuses: str) -> int:
        """How many items of KIND this call ended with one of STATUSES."""
        return sum(self.items[kind, status] for status in statuses)


class _Tally:
    """What a follower's engines did, from their item events: the counts a stopped clone or forward
    reports (the run's own counts span every earlier start of the same command)."""

    def __init__(self) -> None:
        self.items: Counter[tuple[str, str]] = Counter()
        self.nbytes = 0
        self._lock = threading.Lock()  # cycles follow one another, but events come from their threads

    def handlers(self) -> Handlers:
        return [(ITEM_DONE, self._done), (ITEM_FAILED, self._failed)]

    def _done(self, event: Event) -> None:
        with self._lock:
            self.items[event.kind or "", event.status or ""] += 1
            self.nbytes += event.nbytes

    def _failed(self, event: Event) -> None:
        with self._lock:
            self.items[event.kind or "", FAILED] += event.count

    def into(self, followed: Followed) -> Followed:
        with self._lock:
            followed.items, followed.nbytes = Counter(self.items), self.nbytes
        return followed


@dataclass
class Comparison:
    """What two archives hold, side by side (see pacsflow.ops.compare)."""

    level: str
    counts: tuple[int, int]
    differences: list[Any] = field(default_factory=list)
    summary: str = ""
    transfer: RunResult | None = None
    #: A and B as compared (names, or URLs without passwords): the CSV looks their resources up
    sides: tuple[str, ...] = ()
    #: the tags a DICOM node side answered with, by resource (see pacsflow.ops.compare.Holdings)
    node_tags: tuple[dict[str, dict[str, str]], ...] = ()

    @property
    def equal(self) -> bool:
        return not self.differences

    @property
    def empty(self) -> bool:
        """Neither side held anything to compare (the query or dates matched nothing, or both are empty):
        equal, but it proves nothing, so the CLI does not call it a match."""
        return self.counts == (0, 0)


class Pacsflow:
    """One user's session: settings, the process's one ledger, and every way to start or follow a run.

    Settings come from SETTINGS, or are loaded from CONFIG (default: ./pacsflow.toml and PACSFLOW_*
    variables) with LEDGER and LOG_PHI as overrides. Close it (or use `with`) to release the ledger.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: str | Path | None = None,
        ledger: str | None = None,
        log_phi: bool = False,
        progress: Callable[[], Progress] | None = None,
    ) -> None:
        self._settings = settings
        self._config = config
        self._ledger_url = ledger
        self._log_phi = log_phi
        self._ledger: Ledger | None = None
        #: makes the progress display of each run (a bar on a terminal, log lines otherwise)
        self.progress = progress or (lambda: make_progress(quiet=True))

    # -- session --------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """Loaded on first use. Raises ConfigError naming the file or variable of a bad value."""
        if self._settings is None:
            overrides: dict[str, Any] = {"ledger": self._ledger_url}
            if self._log_phi:
                overrides["log_phi"] = True
            self._settings = load_settings(self._config, **overrides)
            # before any client is made: each takes its server's rate limit when it is built
            configure_limits(self._settings.rate_limits)
        return self._settings

    @property
    def ledger(self) -> Ledger:
        """The one ledger (one connection pool) of this session, however many runs use it.

        Only a command that starts runs creates a ledger (`_open_ledger(create=True)`); reading one that
        does not exist yet raises NoLedger, which names where it was looked for.
        """
        return self._open_ledger(create=False)

    def _open_ledger(self, *, create: bool) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.settings.ledger, create=create)
        return self._ledger

    @property
    def log_phi(self) -> bool:
        return self._log_phi or bool(self._settings is not None and self._settings.log_phi)

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def __enter__(self) -> Pacsflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self, exc: PacsflowError) -> str:
        """An error as the terminal or a log may show it (no file names or IDs unless log_phi)."""
        return public_text(exc, self.log_phi)

    def remember_credentials(self, urls: Sequence[str] | None) -> None:
        """URLs with user:password of servers that stored runs name by URL only (runs keep no passwords).

        Raises ConfigError for a URL without credentials.
        """
        for url in urls or []:
            if self.settings.public_spec(url) == url:
                raise ConfigError(f"--credentials {redact_url(url)!r}: give a URL with user:password@")

    def engine(
        self,
        *,
        workers: int | None = None,
        window: str | None = None,
        stop: threading.Event | None = None,
        give_up_after: str | float | None = None,
        handlers: Handlers = (),
        **options: Any,
    ) -> Engine:
        """An engine on this session's ledger (one per run: its counters belong to that run)."""
        engine = Engine(
            self.ledger,
            self.settings,
            workers=workers,
            progress=self.progress(),
            window=window,
            stop=stop,
            give_up_after=self._give_up_after(give_up_after),
            **options,
        )
        for event_type, handler in handlers:
            engine.events.subscribe(event_type, handler)
        return engine

    # -- runs -----------------------------------------------------------------------------------

    def prepare(self, operation: str, params: Mapping[str, Any], *, workers: int | None = None) -> Operation:
        """OPERATION built with PARAMS and checked against its servers (its preflight), as `start` does
        first, but with no run made yet: a face can show what the run would do (`Delete.summary`), ask,
        and then give the operation to `start` in place of its name, or close it.

        Raises what `start` raises before its run exists.
        """
        settings = self.settings
        params = scrub_params(settings, {"workers": workers or settings.workers, **params})
        op = operation_class(operation)(settings, params)
        try:
            with folders_named_in_errors():
                op.preflight()
        except BaseException:
            op.close()
            raise
        return op

    def start(
        self,
        operation: str | Operation,
        params: Mapping[str, Any] | None = None,
        *,
        workers: int | None = None,
        plan_only: bool = False,
        give_up_after: str | float | None = None,
        stop: threading.Event | None = None,
        handlers: Handlers = (),
    ) -> RunResult:
        """Check, plan and (unless PLAN_ONLY) work a new run of OPERATION with PARAMS (OPERATION: a
        name, or what `prepare` gave, whose own parameters are used).

        Servers given as URLs with a password are stored without it (the ledger may be a shared
        database): the password stays in this session's memory. Raises ConfigError for bad parameters
        or settings, PreflightError/Unauthorized when a server cannot be used at all.
        """
        settings = self.settings
        if isinstance(operation, Operation):
            op = operation
            workers = workers or getattr(op.p, "workers", None)
        else:
            params = scrub_params(settings, {"workers": workers or settings.workers, **(params or {})})
            op = operation_class(operation)(settings, params)  # checks the parameters before any side effect
        self._open_ledger(create=True)
        engine = self.engine(workers=workers, give_up_after=give_up_after, stop=stop, handlers=handlers)
        with folders_named_in_errors():
            if plan_only:
                return engine.start(op, plan_only=True)
            with self._heartbeat() as beat:
                return beat(engine.start(op))

    def resume(
        self,
        run_ref: str,
        *,
        workers: int | None = None,
        give_up_after: str | float | None = None,
        stop: threading.Event | None = None,
        handlers: Handlers = (),
        credentials: Sequence[str] = (),
    ) -> RunResult:
        """Continue a stopped or killed run (or join one other processes work).

        Raises ConfigError for an unknown run, and with a hint when a server the run names by URL
        needs its password again (`credentials`).
        """
        self.remember_credentials(credentials)
        _resumable(self.ledger.run(run_ref))
        engine = self.engine(workers=workers, give_up_after=give_up_after, stop=stop, handlers=handlers)
        with self._heartbeat() as beat, folders_named_in_errors():
            try:
                return beat(engine.resume(run_ref))
            except Unauthorized as exc:
                raise ConfigError(
                    f"{exc.reason}; a run stores servers given as URLs without their password: give it "
                    f"again with `pacsflow resume {run_ref} --credentials http://USER:PASSWORD@HOST:PORT`, "
                    "or name the server in pacsflow.toml"
                ) from None

    def retry(
        self,
        run_ref: str,
        *,
        on_put_back: Callable[[str, int], None] | None = None,
        **options: Any,
    ) -> RunResult:
        """Put a run's failed items back to pending (ON_PUT_BACK is told the run and how many), then work
        them again as `resume` does (same options). Raises ConfigError for an unknown run, and what
        `resume` raises."""
        self.remember_credentials(options.pop("credentials", ()))
        run = self.ledger.run(run_ref)
        _resumable(run)
        count = self.ledger.retry_failed(run.id)
        if on_put_back is not None:
            on_put_back(run.id, count)
        return self.resume(run.id, **options)

    def runs(self, limit: int = 20) -> list[RunInfo]:
        """The newest runs first (none when the ledger does not exist yet), each with the status people
        should read: 'interrupted' for a run that says it is running while its process is gone (see
        Ledger.shown_status). Raises ConfigError when the ledger cannot be opened."""
        try:
            found = self.ledger.runs(limit)
        except NoLedger:
            return []
        return [replace(run, status=self.ledger.shown_status(run)) for run in found]

    def show(self, run_ref: str, *, failed: bool = False, limit: int = 50, items: bool = False) -> list[str]:
        """A run's parameters (secrets hidden), counts, timing, with FAILED its failures and with ITEMS
        its items and what each did: the lines of `pacsflow run show` (the same as `view` holds).

        Raises ConfigError for an unknown or ambiguous run reference."""
        from pacsflow.runview import render_view

        return render_view(self.view(run_ref, failed=failed, limit=limit, items=items))

    def view(
        self, run_ref: str, *, failed: bool = False, limit: int = 50, items: bool = False
    ) -> dict[str, Any]:
        """What `show` prints, as plain data (`run show --json`, a web page): see runview.run_view for
        its keys. Raises ConfigError for an unknown or ambiguous run reference."""
        from pacsflow.runview import run_view

        return run_view(self.ledger, run_ref, failed=failed, limit=limit, items=items)

    def check(self, targets: Sequence[str] = ()) -> tuple[list[str], bool]:
        """One line per server or modality (all configured when none named), and whether all are fine.

        Unreachable targets are reported in their line; raises ConfigError for an unknown name."""
        from pacsflow.checks import check_targets

        return check_targets(self.settings, list(targets))

    # -- de-identification ----------------------------------------------------------------------

    def mapping_export(self, path: str | Path, kind: str = "mapping") -> int:
        """Write the mapping (mode 0600) as the seed's mapping.csv, or `uid-pairs`/`patient-pairs` CSVs of
        old,new values. Returns the rows written. Raises NoLedger, ConfigError for an unknown format."""
        from pacsflow.anonymize.mapping import export

        return export(self.ledger, Path(path), kind)

    def mapping_check(self) -> list[Any]:
        """Conflicts in the mapping (pacsflow.anonymize.mapping.Conflict): none when it is consistent."""
        from pacsflow.anonymize.mapping import check

        return check(self.ledger)

    def mapping_lookup(self, value: str) -> list[dict[str, Any]]:
        """Re-identify: the originals behind a pseudonym, a new UID or a new accession number."""
        from pacsflow.anonymize.mapping import lookup

        return lookup(self.ledger, value)

    def verify_files(self, paths: Sequence[str | Path]) -> Any:
        """Check de-identified files under PATHS (folders recursively) with the verifier, against the
        mapping when the ledger exists. Returns a pacsflow.anonymize.verify.Report."""
        from pacsflow.anonymize.verify import Verifier
        from pacsflow.dicomfiles import iter_files, open_regular

        try:
            ledger: Ledger | None = self.ledger
        except NoLedger:
            ledger = None
        verifier = Verifier(ledger)

        def files() -> Iterator[tuple[str, bytes]]:
            for found in iter_files([Path(path) for path in paths]):
                if not isinstance(found, Path):
                    continue
                try:
                    with open_regular(found) as fh:
                        yield found.name, fh.read()
                except OSError:
                    continue

        return verifier.report(files())

    def verify_server(self, server: str, selection: Mapping[str, Any]) -> Any:
        """Check the instances of studies on SERVER (chosen as transfer chooses them: studies, accessions,
        patients, query; none: every study) with the verifier. Returns a Report. Raises ConfigError,
        PreflightError, Unauthorized, what the server's answers raise."""
        from pacsflow.anonymize.verify import Verifier
        from pacsflow.ops.servers import connect, preflight_server
        from pacsflow.selection import Selection, resolve

        try:
            ledger: Ledger | None = self.ledger
        except NoLedger:
            ledger = None
        verifier = Verifier(ledger)
        with connect(self.settings, server, self.settings.workers) as orthanc:
            preflight_server(orthanc)
            studies = resolve(orthanc, Selection.of(SimpleNamespace(**selection)))

            def files() -> Iterator[tuple[str, bytes]]:
                for study in studies:
                    for instance in orthanc.instance_ids_of("studies", study):
                        yield instance, orthanc.instance_file(instance)

            return verifier.report(files())

    @staticmethod
    def new_secret() -> str:
        """A fresh secret for `[anonymize] secret` (never stored by pacsflow itself)."""
        from pacsflow.anonymize.keys import new_secret

        return new_secret()

    # -- followers ------------------------------------------------------------------------------

    def clone(
        self,
        source: str,
        destination: str,
        *,
        follow: bool = False,
        window: str | None = None,
        poll: float = 2.0,
        workers: int | None = None,
        give_up_after: str | float | None = None,
        stop: threading.Event | None = None,
        on_caught_up: Callable[[RunResult], None] | None = None,
    ) -> Followed:
        """Copy everything from SOURCE to DESTINATION; with FOLLOW go on copying each new instance until
        STOP is set. The same source and destination continue the earlier clone run, its change feed
        from the last point whose changes were all done. Raises ConfigError (bad parameters, the
        destination is the source), PreflightError/Unauthorized (a server unusable at the start), and
        what halted the follow (e.g. giving up on a server down longer than give_up_after)."""
        from pacsflow.ops.transfer import Clone, instance_item
        from pacsflow.services.follower import CHECKPOINT, last_change

        settings = self.settings
        source, destination = settings.public_spec(source), settings.public_spec(destination)
        params = {"from": source, "to": destination, "workers": workers or settings.workers}
        stop = stop or threading.Event()
        # first: it opens the ledger, creating it for a first run (the engine only reads one)
        earlier = self._earlier_run("clone", {"from": source, "to": destination})
        tally = _Tally()  # what this call copies, for the line a stopped follow ends with
        engine = self.engine(
            workers=workers, window=window, stop=stop, give_up_after=give_up_after, handlers=tally.handlers()
        )
        with self._heartbeat() as beat:
            if earlier:
                log.info("continuing clone run %s", earlier)
                result = engine.resume(earlier)
            else:
                operation = Clone(settings, params)
                operation.preflight()
                params["start_change"] = last_change(operation.source)  # changes after this are followed
                result = engine.start(operation)
            run_id = result.run_id
            if self.ledger.checkpoint(run_id, CHECKPOINT) is None:
                start = self.ledger.run(run_id).params.get("start_change", 0)
                self.ledger.set_checkpoint(run_id, CHECKPOINT, str(start))
            if on_caught_up is not None:
                on_caught_up(result)
            if not follow or stop.is_set() or result.error is not None:
                return tally.into(Followed(run_id, beat(result), stopped=stop.is_set()))
            self._follow(
                run_id,
                Clone,
                lambda _: lambda change: [instance_item(change["ID"])],
                "NewInstance",
                workers=workers,
                window=window,
                poll=poll,
                stop=stop,
                give_up_after=give_up_after,
                handlers=tally.handlers(),
            )
        return tally.into(Followed(run_id, result, stopped=stop.is_set(), following=True))

    def forward(
        self,
        source: str,
        destinations: Sequence[str],
        *,
        trigger: str = "stable-study",
        window: str | None = None,
        poll: float = 2.0,
        workers: int | None = None,
        give_up_after: str | float | None = None,
        stop: threading.Event | None = None,
        on_caught_up: Callable[[RunResult], None] | None = None,
    ) -> Followed:
        """Send each stable study (or each new instance) of SOURCE to every destination and delete it from
        the source once all of them hold it, until STOP is set. The same command continues its run.
        Raises as `clone` does."""
        from pacsflow.ops.params import validate_params
        from pacsflow.ops.transfer import Forward
        from pacsflow.services.follower import CHECKPOINT

        settings = self.settings
        source = settings.public_spec(source)
        destinations = [settings.public_spec(spec) for spec in destinations]
        validate_params("forward", {"from": source, "to": destinations, "trigger": trigger})  # before pings
        params = {
            "from": source,
            "to": list(destinations),
            "workers": workers or settings.workers,
            "trigger": trigger,
        }
        stop = stop or threading.Event()
        # first: it opens the ledger, creating it for a first run (the engine only reads one)
        earlier = self._earlier_run("forward", {"from": source, "to": list(destinations), "trigger": trigger})
        tally = _Tally()  # what this call forwards and deletes, for the line a stopped forward ends with
        engine = self.engine(
            workers=workers, window=window, stop=stop, give_up_after=give_up_after, handlers=tally.handlers()
        )
        with self._heartbeat() as beat:
            if earlier:
                result = engine.resume(earlier)
            else:
                result = engine.start(Forward(settings, params))
                self.ledger.set_checkpoint(result.run_id, CHECKPOINT, "0")  # studies already waiting go too
            if result.error is not None:
                return tally.into(Followed(result.run_id, beat(result)))
            if on_caught_up is not None:
                on_caught_up(result)
            self._follow(
                result.run_id,
                Forward,
                lambda planner: planner.items_for,
                "StableStudy" if trigger == "stable-study" else "NewInstance",
                workers=workers,
                window=window,
                poll=poll,
                stop=stop,
                give_up_after=give_up_after,
                handlers=tally.handlers(),
            )
        return tally.into(Followed(result.run_id, result, stopped=stop.is_set(), following=True))

    def _earlier_run(self, operation: str, match: dict[str, Any]) -> str | None:
        """The newest run of OPERATION with these parameters: a follower started again continues it."""
        for run in self._open_ledger(create=True).runs(10_000):
            if run.operation == operation and all(run.params.get(k) == v for k, v in match.items()):
                return run.id
        return None

    def _follow(
        self,
        run_id: str,
        op_class: type[Any],
        items_of: Callable[[Any], Callable[[dict[str, Any]], list[Any]]],
        change_type: str,
        *,
        workers: int | None,
        window: str | None,
        poll: float,
        stop: threading.Event,
        give_up_after: str | float | None,
        handlers: Handlers = (),
    ) -> None:
        """Work a run from the source's change feed until stopped, each cycle's engine telling HANDLERS
        its events. Raises the error that halted it."""
        from pacsflow.pacing import TimeWindow
        from pacsflow.services.follower import ChangeFollower

        settings = self.settings
        params = self.ledger.run(run_id).params
        alive = _Pulse(Heartbeat(settings.heartbeat_url))
        planner = op_class(settings, params)
        window = window or settings.window
        try:
            ChangeFollower(
                self.ledger,
                run_id,
                make_operation=lambda: op_class(settings, params),
                make_engine=lambda **options: self.engine(
                    workers=workers,
                    window=window,
                    stop=stop,
                    give_up_after=give_up_after,
                    handlers=handlers,
                    **options,
                ),
                source=planner.source,
                stop=stop,
                poll=poll,
                window=TimeWindow(window) if window else None,
                items=items_of(planner),
                change_type=change_type,
                give_up_after=self._give_up_after(give_up_after),
                on_cycle=alive.cycle,
            ).run()
        finally:
            planner.close()
            alive.beat.close()

    # -- storage SCP ----------------------------------------------------------------------------

    def scp(
        self,
        to: str,
        *,
        aet: str | None = None,
        port: int | None = None,
        bind: str = "0.0.0.0",
        accept_aets: Sequence[str] = (),
        stop: threading.Event,
        on_listening: Callable[[StorageSCP], None] | None = None,
    ) -> Received:
        """Receive instances over DICOM into TO (a folder or an Orthanc server) until STOP is set, as a
        run whose items are the instances received (see pacsflow.services.scp.serve). AET and PORT
        default to the settings'. Returns what this session received. Raises ConfigError (a bad
        destination or address, a folder that cannot be made), PreflightError/Unauthorized (a server)."""
        from pacsflow.services.scp import serve

        with folders_named_in_errors():
            return serve(
                self.settings,
                self._open_ledger(create=True),
                to,
                aet=aet,
                port=port,
                bind=bind,
                accept_aets=accept_aets,
                stop=stop,
                log_phi=self.log_phi,
                on_listening=on_listening,
            )

    # -- comparing ------------------------------------------------------------------------------

    def compare(
        self,
        a: str,
        b: str,
        *,
        level: str = "study",
        query: Mapping[str, str] | None = None,
        from_date: str | None = None,
        to_date: str | None = None,
        transfer_missing: bool = False,
        workers: int | None = None,
        give_up_after: str | float | None = None,
        stop: threading.Event | None = None,
        on_compared: Callable[[Comparison], None] | None = None,
    ) -> Comparison:
        """What A and B (servers or DICOM nodes) hold at LEVEL; with TRANSFER_MISSING copy what B lacks.
        Dates are YYYYMMDD or YYYY-MM-DD.

        Raises ConfigError for a bad level, query or date, or a DICOM node that refuses our C-FIND,
        PreflightError when either side does not answer.
        """
        from pacsflow.dimse import check_find
        from pacsflow.ops import compare as comparing
        from pacsflow.ops.servers import connect, preflight_node, preflight_server
        from pacsflow.selection import check_query, study_date_range

        settings = self.settings
        a, b = settings.public_spec(a), settings.public_spec(b)
        # checked before any server is asked: a misspelt tag or a date written otherwise would match
        # nothing on either side, and look like a match
        conditions = check_query(query) or {}
        dates = study_date_range(from_date, to_date)
        if dates is not None:
            if "StudyDate" in conditions:
                raise ConfigError("give --from-date/--to-date or --query StudyDate=..., not both")
            conditions["StudyDate"] = dates
        pool = workers or settings.workers
        if transfer_missing and settings.is_modality(a):
            raise ConfigError(
                "--transfer-missing copies from A: A must be an Orthanc server (B may be a node)"
            )

        def holdings(spec: str) -> comparing.Holdings:
            if settings.is_modality(spec):
                node = settings.modality(spec)
                preflight_node(node, settings.aet)
                check_find(node, settings.aet)  # a node refusing our C-FIND: its likely cause, once
                return comparing.node_holdings(node, settings.aet, level, conditions or None)
            with connect(settings, spec, pool) as server:
                preflight_server(server)
                return comparing.holdings(server, level, conditions or None)

        held_a, held_b = holdings(a), holdings(b)
        differences = comparing.compare(held_a, held_b, level)
        sizes = (len(held_a), len(held_b))
        found = Comparison(
            level,
            sizes,
            differences,
            comparing.summary(differences, level, sizes, filtered=bool(conditions)),
            sides=(a, b),
            node_tags=(held_a.tags, held_b.tags),
        )
        if on_compared is not None:
            on_compared(found)
        if differences and transfer_missing and not (stop is not None and stop.is_set()):
            with connect(settings, a, pool) as left:
                missing = comparing.studies_to_copy(left, differences)
            if missing:
                found.transfer = self.start(
                    "transfer",
                    {"from": a, "to": b, "studies": missing},
                    workers=workers,
                    give_up_after=give_up_after,
                    stop=stop,
                )
        return found

    def write_differences(self, comparison: Comparison, out: Path) -> None:
        """The differences as a CSV (mode 0600: it names patients), each with its PatientID, UIDs, date
        and description, looked up on the side that holds it (servers by REST; nodes answered them with
        their C-FIND). Raises ConfigError when OUT cannot be written, and what the servers' answers raise."""
        with folders_named_in_errors():
            self._write_differences(comparison, out)

    def _write_differences(self, comparison: Comparison, out: Path) -> None:
        from contextlib import ExitStack

        from pacsflow.ops import compare as comparing
        from pacsflow.ops.servers import connect

        if not comparison.sides:  # a Comparison made without sides: the Orthanc IDs are all there is
            comparing.write_csv(out, comparison.differences)
            return
        with ExitStack() as stack:
            lookups: list[Callable[[str], Mapping[str, str]]] = []
            for n, spec in enumerate(comparison.sides):
                if self.settings.is_modality(spec):
                    held = comparison.node_tags[n] if n < len(comparison.node_tags) else {}
                    lookups.append(lambda resource, held=held: held.get(resource, {}))
                else:
                    tags = comparing.ServerTags(stack.enter_context(connect(self.settings, spec, 1)))
                    lookups.append(lambda resource, tags=tags: tags(comparison.level, resource))

            def tags_of(difference: Any) -> Mapping[str, str]:
                # only in B: B's tags; only in A or on both: A's, else B's (gone from A meanwhile)
                order = lookups[1:] if difference.where == "only-b" else lookups
                for lookup in order:
                    found = lookup(difference.resource)
                    if found:
                        return found
                return {}

            comparing.write_csv(out, comparison.differences, comparison.level, tags_of)

    # -- workers --------------------------------------------------------------------------------

    def work(
        self,
        *,
        once: bool = False,
        poll: float = 5.0,
        workers: int | None = None,
        give_up_after: str | float | None = None,
        stop: threading.Event | None = None,
        on_result: Callable[[RunResult], None] | None = None,
    ) -> int:
        """Join the runs of the ledger and work their items until STOP is set (or, with ONCE, until no
        run has work this process can do); the worst exit status of what it did.

        A run that cannot start here (a server down, a password missing) is tried again later, with
        backoff from 15 seconds to 10 minutes; a run waiting for a remote that is down is left for other
        runs meanwhile. With ONCE such runs are left to others. Raises ConfigError when the ledger
        cannot be opened; a run's own errors are logged and reflected in the returned status.
        """
        stop = stop or threading.Event()
        settings = self.settings
        self._open_ledger(create=True)  # a worker may wait on a ledger no run was started in yet
        # one view of which remotes are down for all the runs this worker joins: an outage is reported
        # once, and a run waiting for it is left for a while so that the others go on meanwhile
        outages = Outages(self._give_up_after(give_up_after))
        beat = Heartbeat(settings.heartbeat_url)
        exit_code = EXIT_OK
        held_off: dict[str, tuple[float, float]] = {}  # run -> (not before, last delay)
        try:
            while not stop.is_set():
                now = time.monotonic()
                active = [
                    run for run in self.ledger.active_runs() if held_off.get(run.id, (0.0, 0.0))[0] <= now
                ]
                if not active and once:
                    break
                for run in active:
                    if stop.is_set():
                        break
                    left = plural(run.remaining, "item")
                    log.info("joining run %s (%s, %s left)", run.id, run.operation, left)
                    beat.start()
                    try:
                        engine = self.engine(
                            workers=workers, stop=stop, outages=outages, leave_when_waiting=True
                        )
                        result = engine.resume(run.id)
                    except PacsflowError as exc:  # this run cannot start here now; the others still can
                        beat.fail()
                        delay = min(600.0, 2 * held_off.get(run.id, (0.0, 7.5))[1])
                        held_off[run.id] = (float("inf") if once else time.monotonic() + delay, delay)
                        later = "" if once else f"; trying it again in {delay:.0f}s"
                        log.error("run %s: %s%s", run.id, self.describe(exc), later)
                        exit_code = max(exit_code, EXIT_USAGE if exc.fatal else EXIT_FAILED)
                        continue
                    if on_result is not None:
                        on_result(result)
                    beat.success() if result.exit_code == EXIT_OK else beat.fail()
                    if result.waiting or result.gave_up:
                        # its remote is down: other runs first; back when the next probe is due
                        wait = 600.0 if result.gave_up else max(5.0, outages.seconds_to_next_probe())
                        held_off[run.id] = (float("inf") if once else time.monotonic() + wait, wait)
                    elif result.error is not None and result.error.fatal:
                        # it stopped on something this process cannot mend (a node that does not know
                        # our AE title): with backoff, as a run that cannot start, not at once again
                        delay = min(600.0, 2 * held_off.get(run.id, (0.0, 7.5))[1])
                        held_off[run.id] = (float("inf") if once else time.monotonic() + delay, delay)
                    else:
                        held_off.pop(run.id, None)
                    exit_code = max(exit_code, result.exit_code)
                if not any(held_off.get(run.id, (0.0, 0.0))[0] <= time.monotonic() for run in active):
                    stop.wait(poll)
        finally:
            beat.close()
        return exit_code

    # -- helpers --------------------------------------------------------------------------------

    def _give_up_after(self, value: str | float | None) -> float:
        """Seconds a remote may stay down: VALUE (e.g. '2h' from --give-up-after), else the settings'."""
        return parse_duration(value) if value else self.settings.give_up_after

    @contextmanager
    def _heartbeat(self) -> Iterator[Callable[[RunResult], RunResult]]:
        """Ping the heartbeat URL at the start, then success, or fail when an error escaped or the last
        result passed through the yielded function did not end with exit status 0."""
        beat = Heartbeat(self.settings.heartbeat_url)
        beat.start()
        outcome: list[RunResult] = []

        def passing(result: RunResult) -> RunResult:
            outcome.append(result)
            return result

        failed = True
        try:
            yield passing
            failed = bool(outcome) and outcome[-1].exit_code != EXIT_OK
        finally:
            beat.fail() if failed else beat.success()
            beat.close()


def _resumable(run: RunInfo) -> None:
    """Raise ConfigError for a run that is a record, not work: a storage SCP session received what its
    senders sent, and nothing of it can be done again (they send again to a new session)."""
    if run.operation == "scp":
        raise ConfigError(
            f"run {run.id} is a storage SCP session (what it received); it is not resumed: "
            "start `pacsflow scp` again and let the senders send what failed"
        )


@contextmanager
def folders_named_in_errors() -> Iterator[None]:
    """An output folder or file that cannot be made or written (`--out /proc/x`, a full or read-only
    disk) stops the run with one line naming it, as a usage error (exit 2)."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot use this path: {reason}", where=exc.filename) from None


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
