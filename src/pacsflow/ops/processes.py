"""De-identifying a large local run in worker processes: pydicom is pure Python, so threads take turns on
one core, while processes use every core. Each process reads a file, de-identifies, verifies and writes
it itself, so only its name and a small result cross between processes."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsflow.anonymize.keys import Keys
from pacsflow.errors import BadInput, TransientError
from pacsflow.ops.base import Outcome

log = logging.getLogger("pacsflow")
#: below this many items a run is over before processes would have started (about half a second)
MIN_ITEMS = 200
#: a file this large is read in the run's own process (an archive, a huge multi-frame image)
_MAX_BYTES = 256 * 1024 * 1024
#: seconds one file may take in a worker process before its item is tried again later
FILE_TIMEOUT = 300
_state: dict[str, Any] = {}  # in each worker process: its Deidentifier and output folder


@dataclass(frozen=True)
class Setup:
    """What a worker process needs to build the run's Deidentifier (sent once, when it starts)."""

    ledger_url: str = field(repr=False)  # may hold a database password
    keys: Keys
    params: Any  # the run's parameter model (options, pseudonym format, CSV)


def _start(setup: Setup) -> None:
    """A worker process: build its Deidentifier, with its own connection to the ledger (the mapping)."""
    from pacsflow.ledger import Ledger
    from pacsflow.ops.deidentifying import build_deidentifier

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the run through its own process
    ledger = Ledger(setup.ledger_url)
    _state["deidentifier"] = build_deidentifier(ledger, setup.keys, setup.params, None)


def _ready() -> int:
    return os.getpid()


def _write_file(path: str, out: str, run_id: str | None) -> tuple[str, Any]:
    """In a worker process: one plain file de-identified into OUT. Returns ("outcome", Outcome), ("error",
    (reason, where, detail)), or ("other", None) for what the run's process must handle itself."""
    from pacsflow.dicomfiles import looks_like_dicom, open_regular
    from pacsflow.ops.anonymize import write_into

    _state["deidentifier"].pseudonyms.run_id = run_id  # a new patient's row names the run
    try:
        with open_regular(path) as fh:
            head = fh.read(1024)
            if not looks_like_dicom(head) or os.fstat(fh.fileno()).st_size > _MAX_BYTES:
                return "other", None
            fh.seek(0)
            data = fh.read()  # one read into one buffer: no copy of a 500 KB file to join two parts
    except OSError:
        return "other", None  # the run's own reading says what is wrong with it
    try:
        return "outcome", write_into(_state["deidentifier"], data, Path(path).name, Path(out))
    except BadInput as exc:
        return "error", (exc.reason, exc.where, exc.detail)


class Processes:
    """A pool of worker processes for one run."""

    def __init__(self, setup: Setup, processes: int) -> None:
        # Forked at once while this process has no other thread (the engine's start later), the workers
        # need no time to start; otherwise from a fork server, which imports what they need first.
        method = "fork" if threading.active_count() == 1 else "forkserver"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(["pacsflow.ops.processes", "pacsflow.ops.anonymize"])
        self.pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            processes, mp_context=context, initializer=_start, initargs=(setup,)
        )
        # every worker started now: a process forked later would copy the engine's threads' locks
        started = [self.pool.submit(_ready) for _ in range(processes)]
        for future in started:
            future.result()

    @classmethod
    def for_paths(cls, op: Any, keys: Keys, paths: list[Path]) -> Processes | None:
        """Processes for OP when PATHS hold MIN_ITEMS files or more, OP has more than one worker and this
        machine more than one core; None otherwise."""
        from pacsflow.dicomfiles import iter_files

        count = min(op.p.workers or op.settings.workers, os.cpu_count() or 1)
        if count < 2 or sum(1 for _ in itertools.islice(iter_files(paths), MIN_ITEMS)) < MIN_ITEMS:
            return None
        log.debug("de-identifying in %d worker processes", count)
        return cls(Setup(op.settings.ledger, keys, op.p), count)

    def write_file(self, path: str, out: str, run_id: str | None) -> Outcome | None:
        """The Outcome of one file done in a worker process; None when this process must do it (not a
        plain DICOM file, or the pool broke: a process was killed). Raises BadInput as the work did."""
        pool = self.pool
        if pool is None:
            return None
        try:
            future: Future[tuple[str, Any]] = pool.submit(_write_file, path, out, run_id)
            kind, value = future.result(timeout=FILE_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise TransientError(
                f"not de-identified within {FILE_TIMEOUT} s", where=Path(path).name
            ) from None
        except BrokenProcessPool:
            log.warning("a de-identifying process died; going on in the run's own process")
            self.pool = None
            return None
        if kind == "outcome":
            return value
        if kind == "error":
            reason, where, detail = value
            raise BadInput(reason, where=where, detail=detail)
        return None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
