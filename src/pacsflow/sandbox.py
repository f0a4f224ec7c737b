"""Throwaway local Orthanc servers on free loopback ports, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from pacsflow.config import ServerConfig
from pacsflow.errors import ConfigError

ORTHANC_BINARY = os.environ.get("PACSFLOW_ORTHANC_BINARY", "/usr/sbin/Orthanc")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalOrthanc:
    """One Orthanc process we started, with its ports, credentials and data folder."""

    name: str
    root: Path
    http_port: int = 0
    dicom_port: int = 0
    aet: str = "ORTHANC"
    user: str | None = None
    password: str | None = None
    modalities: dict[str, list[Any]] = field(default_factory=dict)
    peers: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url_with_credentials(self) -> str:
        if self.user is None:
            return self.url
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.http_port}"

    @property
    def config_file(self) -> Path:
        return self.root / "orthanc.json"

    @property
    def log_file(self) -> Path:
        return self.root / "orthanc.log"

    def server_config(self) -> ServerConfig:
        return ServerConfig(
            url=self.url,
            user=self.user,
            password=SecretStr(self.password) if self.password is not None else None,
            name=self.name,
        )

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": self.user is not None,
            "RegisteredUsers": {self.user: self.password} if self.user is not None else {},
            "DicomModalities": self.modalities,
            "OrthancPeers": self.peers,
            "Plugins": [],
            "StableAge": 2,
            "SaveJobs": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "UnknownSopClassAccepted": True,
            "HttpThreadsCount": 50,
        }
        config.update(self.extra)
        self.config_file.write_text(json.dumps(config, indent=2))

    def start(self, timeout: float = 30.0) -> LocalOrthanc:
        """Start (or restart) the process and wait until its REST API answers."""
        if not Path(ORTHANC_BINARY).exists():
            raise ConfigError(f"Orthanc is not installed at {ORTHANC_BINARY} (apt-get install orthanc)")
        if not self.http_port:
            self.http_port = free_port()
        if not self.dicom_port:
            self.dicom_port = free_port()
        self.write_config()
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [ORTHANC_BINARY, str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        auth = (self.user, self.password or "") if self.user is not None else None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-800:]
                raise RuntimeError(f"Orthanc {self.name} exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(self.url + "/system", auth=auth, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc {self.name} did not answer on {self.url} within {timeout:.0f}s")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the process we started (by its PID), gracefully first."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def kill(self) -> None:
        """Kill -9: the crash a real server can show."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe(self, graceful: bool = True) -> None:
        """Stop and remove every file of this server."""
        if graceful:
            self.stop()
        else:
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalOrthanc:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_orthanc(root: Path, name: str = "A", **options: Any) -> LocalOrthanc:
    """Start a throwaway Orthanc with its data under ROOT; options as LocalOrthanc fields."""
    return LocalOrthanc(name=name, root=Path(root), **options).start()
