"""A real DCMTK dcmqrscp Q/R peer for the tests: a second C-FIND / C-MOVE / C-GET node besides Orthanc."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

from pacsflow.config import ModalityConfig
from pacsflow.sandbox import free_port

HOST = "127.0.0.1"
#: the called AE title of start()'s readiness probe: one the peer does not serve, so the probe is a single
#: rejected association request that requests() can leave out exactly (an accepted one would add a C-ECHO
#: that the log cannot tie to its association: forked children do not log the calling AE title)
PROBE_AET = "PACSFLOW-PROBE"
# log4cplus: %D is local time (%d would be UTC), %q the milliseconds, %i the process id (the forked child
# that serves an association logs its DIMSE messages under its own pid)
_PATTERN = "%D{%Y-%m-%d %H:%M:%S.%q} [%i] %-5p %c{1} - %m%n"
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \[\d+\] +\w+ +\S+ - (.*)$")
# the INFO messages of dcmqrscp 3.6.7 (dcmqrdb/libsrc/dcmqrsrv.cc) that begin each request it receives;
# a DIMSE message is logged when it arrives, before the answer, and an association request before any check
_KINDS = (
    ("Association Received (", "ASSOCIATE"),
    ("Received Echo SCP RQ", "ECHO"),
    ("Received Find SCP:", "FIND"),
    ("Received Move SCP:", "MOVE"),
    ("Received Get SCP:", "GET"),
    ("Received Store SCP:", "STORE"),
)


def _env() -> dict[str, str]:
    # without it DCMTK leaves Nagle's algorithm on and waits for delayed ACKs: 45-90 ms per C-STORE
    return {**os.environ, "TCP_NODELAY": "1"}


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (apt-get install dcmtk)")
    return path


class Dcmqrscp:
    """A DCMTK dcmqrscp Q/R peer on a free loopback port, with its own storage folder and config."""

    def __init__(
        self,
        root: Path,
        aet: str = "DCMQR",
        move_destinations: dict[str, tuple[str, int]] | None = None,
        *,
        refuse_unknown: bool = False,
        max_associations: int = 16,
    ) -> None:
        """ROOT holds the config, the log and the archive. MOVE_DESTINATIONS: AET -> (host, port) it may
        C-MOVE to. REFUSE_UNKNOWN: accept associations only from those AETs, calling from their host as
        written there (the peer does not look names up: give 127.0.0.1); otherwise any calling AET may
        echo, store, find, move and get. MAX_ASSOCIATIONS at a time: more are rejected for now (busy)."""
        if aet == PROBE_AET:
            raise ValueError(f"{PROBE_AET} is the readiness probe's AE title")
        if refuse_unknown and not move_destinations:
            raise ValueError("refuse_unknown needs move_destinations: the AE titles the peer knows")
        self.root = Path(root)
        self.aet = aet
        self.move_destinations = dict(move_destinations or {})
        self.refuse_unknown = refuse_unknown
        self.max_associations = max_associations
        self.port = free_port()  # chosen now so that .modality can go in a config before start()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.root / "dcmqrscp.cfg"

    @property
    def log_file(self) -> Path:
        return self.root / "dcmqrscp.log"

    @property
    def storage(self) -> Path:
        """The archive's folder: the received files and its index.dat database."""
        return self.root / "db" / self.aet

    @property
    def modality(self) -> ModalityConfig:
        return ModalityConfig(aet=self.aet, host=HOST, port=self.port, name="dcmqr")

    def write_config(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)  # dcmqrscp does not create its storage area
        hosts = [
            f"dest{i} = ({aet}, {host}, {port})"
            for i, (aet, (host, port)) in enumerate(self.move_destinations.items())
        ]
        if hosts:
            hosts.append("known = " + ", ".join(f"dest{i}" for i in range(len(hosts))))
        peers = "known" if self.refuse_unknown else "ANY"
        # no UserName/GroupName: as root, dcmqrscp would switch to that user after binding its port
        self.config_file.write_text(
            f"NetworkTCPPort  = {self.port}\n"
            "MaxPDUSize      = 65536\n"
            f"MaxAssociations = {self.max_associations}\n"
            "HostTable BEGIN\n" + "".join(line + "\n" for line in hosts) + "HostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            "AETable BEGIN\n"
            # quota (studies, bytes per study), the most dcmqrscp 3.6.7 takes: it deletes the oldest study to
            # make room for a 501st
            f'{self.aet} "{self.storage}" RW (500, 1024mb) {peers}\n'
            "AETable END\n"
        )
        (self.root / "log.cfg").write_text(
            "log4cplus.rootLogger = INFO, file\n"
            "log4cplus.appender.file = log4cplus::FileAppender\n"
            f"log4cplus.appender.file.File = {self.log_file}\n"
            # append: after a restart requests() still has the earlier ones
            "log4cplus.appender.file.Append = true\n"
            "log4cplus.appender.file.ImmediateFlush = true\n"
            "log4cplus.appender.file.layout = log4cplus::PatternLayout\n"
            f"log4cplus.appender.file.layout.ConversionPattern = {_PATTERN}\n"
        )

    def start(self, timeout: float = 30.0) -> Dcmqrscp:
        """Write the config, start dcmqrscp and wait until it answers an association request."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        command = [
            _binary("dcmqrscp"),
            "--config",
            str(self.config_file),
            "--log-config",
            str(self.root / "log.cfg"),
            # peers are matched by the address they call from: 127.0.0.1, not a looked-up "localhost"
            "--disable-host-lookup",
            # answer C-FIND in UTF-8 whatever the files' character set: the default converts to ASCII and,
            # failing on a non-ASCII name, answers it unconverted with a warning in the log
            "--convert-to-utf8",
        ]
        with open(self.root / "dcmqrscp.out", "ab") as out:  # progress dots and errors before the log starts
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_env(),
                start_new_session=True,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe = [
            _binary("echoscu"),
            "-aet",
            PROBE_AET,
            "-aec",
            PROBE_AET,
            "-to",
            "5",
            "-ta",
            "5",
            HOST,
            str(self.port),
        ]
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"dcmqrscp exited:\n{self._tail()}")
            answer = subprocess.run(probe, capture_output=True, text=True, env=_env(), timeout=30)
            # the peer does not serve PROBE_AET: a rejection is its answer, a refused connection is not
            if "Association Rejected" in answer.stdout + answer.stderr:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"dcmqrscp did not answer on {HOST}:{self.port} within {timeout:.0f}s:\n{self._tail()}"
        )

    def _tail(self) -> str:
        texts = [
            path.read_text(errors="replace")[-1500:] for path in (self.root / "dcmqrscp.out", self.log_file)
        ]
        return "\n".join(text for text in texts if text)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process we started and the children serving its associations, as a server going down."""
        process, self.process = self.process, None
        if process is None:
            return
        # its process group, by the id start_new_session gave it (its PID): each association is a forked
        # child that would otherwise finish a C-MOVE after the parent is gone
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        process.wait(5)

    def restart(self) -> None:
        """Stop and start again on the same port, with the same archive and log."""
        self.stop()
        self.start()

    def store(self, files: list[Path]) -> None:
        """Send FILES to the peer with storescu (calling AE title PACSFLOW, so with refuse_unknown PACSFLOW
        must be a move destination); it files them in its archive. Else RuntimeError with storescu's words."""
        command = [
            _binary("storescu"),
            "--required",  # propose only the files' SOP classes, whatever they are
            "-aet",
            "PACSFLOW",
            "-aec",
            self.aet,
            HOST,
            str(self.port),
            *map(str, files),
        ]
        # storescu stops at the first failed C-STORE (its default --halt) and exits non-zero
        result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed ({result.returncode}): {result.stdout}{result.stderr}")

    def requests(self) -> list[tuple[float, str]]:
        """Every request the peer received (start()'s probes aside), oldest first: (unix time, kind),
        kind one of ASSOCIATE (accepted or rejected), ECHO, FIND, MOVE, GET, STORE; millisecond precision."""
        if not self.log_file.exists():
            return []
        found: list[tuple[float, str]] = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            match = _LINE.match(line)
            if match is None:
                continue
            stamp, message = match.groups()
            if message.endswith(f"-> {PROBE_AET})"):
                continue
            for prefix, kind in _KINDS:
                if message.startswith(prefix):
                    # naive local time, as logged: .timestamp() reads it in the local zone too
                    found.append((datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp(), kind))
                    break
        # a forked child and the parent append to one file: a line may land just after a later one
        return sorted(found, key=lambda request: request[0])

    def __enter__(self) -> Dcmqrscp:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
