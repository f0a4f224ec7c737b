"""Which Orthanc a server spec really is: the same server may be spelled many ways (a name and a URL,
`localhost` and `127.0.0.1`, a hostname, a proxy), and a source that is also a destination loses what
forward deletes. Servers are told apart by what they are, not by how their addresses are written."""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pacsflow.config import ModalityConfig
from pacsflow.errors import ConfigError
from pacsflow.orthanc import Orthanc

THIS_MACHINE = "this machine"
#: what an Orthanc says about itself in /system that differs between two servers configured apart
SELF_DESCRIPTION = ("Name", "DicomAet", "DicomPort", "HttpPort", "Version", "DatabaseVersion")
#: what makes a record of /changes that one database's record and no other's
CHANGE_FIELDS = ("Seq", "ChangeType", "ID", "Date")
#: looks at the change logs when deletions keep removing the record just read (see _shares_changes)
PROBES = 3


@dataclass(frozen=True)
class Verdict:
    """Whether two servers are one: True, False, or None when nothing tells them apart yet."""

    same: bool | None
    why: str


def addresses(host: str) -> frozenset[str]:
    """The addresses HOST resolves to; every address of this machine (loopback or its own) counts as one."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return frozenset({host.lower()})  # unresolvable: only the same spelling matches it
    return frozenset(_machine(str(info[4][0])) for info in infos)


@functools.lru_cache(maxsize=1)
def _own_addresses() -> frozenset[str]:
    """This machine's addresses by its host name (Debian maps it to 127.0.1.1, others to the LAN IP)."""
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None))
    except (OSError, UnicodeError):
        return frozenset()


def _machine(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # 0.0.0.0 reaches this machine too on Linux
    if ip.is_loopback or ip.is_unspecified or str(ip) in _own_addresses() or _bindable(str(ip)):
        return THIS_MACHINE
    return str(ip)


@functools.lru_cache(maxsize=256)
def _bindable(ip: str) -> bool:
    """True when IP is one of this machine's own addresses (its LAN address, say, which the host name may
    not resolve to): only those can be bound to."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
    except OSError:
        return False
    return True


def same_address(url_a: str, url_b: str) -> bool:
    """True when both URLs reach the same host and port under the same path (a proxy may serve several
    Orthancs under different paths of one port, so the path counts)."""
    a, b = urlsplit(url_a), urlsplit(url_b)
    if _port(a.scheme, a.port) != _port(b.scheme, b.port) or a.path.rstrip("/") != b.path.rstrip("/"):
        return False
    return bool(addresses(a.hostname or "") & addresses(b.hostname or ""))


def _port(scheme: str, port: int | None) -> int:
    return port or (443 if scheme == "https" else 80)


def self_description(server: Orthanc) -> dict[str, Any]:
    system = server.system()
    return {key: system.get(key) for key in SELF_DESCRIPTION}


def _record(page: Any) -> tuple[Any, ...] | None:
    changes = page.get("Changes") if isinstance(page, dict) else None
    return tuple(changes[0].get(key) for key in CHANGE_FIELDS) if changes else None


def change_at(server: Orthanc, seq: int) -> tuple[Any, ...] | None:
    """The server's first change record from SEQ on (Orthanc removes the records of deleted resources)."""
    return _record(server.get_json("/changes", since=max(0, seq - 1), limit=1))


def newest_change(server: Orthanc) -> tuple[Any, ...] | None:
    return _record(server.get_json("/changes", last=""))


def _shares_changes(a: Orthanc, b: Orthanc, seq: int | None) -> bool | None:
    """True when B holds a change record of A's, field for field: only one database has it. None when
    neither has any change record (two empty servers look alike)."""
    for _ in range(PROBES):
        holder, other = a, b
        probe = (change_at(a, seq) if seq is not None else None) or newest_change(a)
        if probe is None:
            holder, other = b, a
            probe = newest_change(b)
        if probe is None:
            return None
        seen = change_at(other, probe[0])
        if seen is not None and seen[0] == probe[0]:
            return seen == probe  # one sequence number, two records: two databases
        if change_at(holder, probe[0]) == probe:
            return False  # still on one side after the other lacked it: one database would show it
        # its resource was deleted between the reads (forward deletes while it checks): look again
    return None


def compare_servers(a: Orthanc, b: Orthanc, *, seq: int | None = None) -> Verdict:
    """Are A and B one Orthanc (or one database)? SEQ, a change A is known to hold, is the best probe."""
    if same_address(a.config.url, b.config.url):
        return Verdict(True, "the same address")
    # The change log first: two Orthancs sharing one database describe themselves differently in /system
    # (their ports) and yet delete from each other.
    shared = _shares_changes(a, b, seq)
    if shared is not None:
        return Verdict(shared, "the same change log" if shared else "different change logs")
    if self_description(a) != self_description(b):
        return Verdict(False, "different /system")
    return Verdict(None, "alike, and neither has changes to tell them apart")


def is_own_dicom_port(server: Orthanc, node: ModalityConfig) -> bool:
    """True when the DICOM node is the server's own DICOM port: C-STOREs to it store into the server.

    On the server's host, the same port is the server; so is the server's own AE title (a port mapping
    or NAT may show the port under another number, and two Orthancs of one host with one AE title could
    not be told apart by their DICOM peers either).
    """
    if not addresses(node.host) & addresses(urlsplit(server.config.url).hostname or ""):
        return False
    system = server.system()
    return node.port == int(system.get("DicomPort") or 0) or node.aet == system.get("DicomAet")


def check_not_source(
    source: Orthanc, destination: Orthanc | ModalityConfig, *, seq: int | None = None
) -> Verdict:
    """Raise ConfigError when DESTINATION is SOURCE itself; otherwise how sure that it is not."""
    if isinstance(destination, ModalityConfig):
        if is_own_dicom_port(source, destination):
            raise ConfigError(
                f"{destination.display} is the DICOM port of the source {source.display}: "
                "a source cannot be its own destination"
            )
        return Verdict(False, "another DICOM port")
    verdict = compare_servers(source, destination, seq=seq)
    if verdict.same:
        # display names and URLs never carry a password
        raise ConfigError(
            f"{destination.display} is the source {source.display} itself ({verdict.why}): "
            "a source cannot be its own destination"
        )
    return verdict
