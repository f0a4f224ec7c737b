"""identity: one Orthanc under several spellings, behind another address, or on its own DICOM port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsflow.config import ModalityConfig, server_from_url
from pacsflow.errors import ConfigError
from pacsflow.identity import check_not_source, compare_servers, is_own_dicom_port, same_address
from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from pacsflow.synthetic import Shape, instance_bytes
from tests.conftest import PASSWORD, USER


class TcpProxy:
    """Another address for a server, as a reverse proxy or a second DNS name gives: every connection to a
    free loopback port is piped to TARGET_PORT."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # so that close() is noticed without a connection
        self.port: int = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, *, credentials: bool = True) -> str:
        login = f"{USER}:{PASSWORD}@" if credentials else ""
        return f"http://{login}127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pipe, args=(source, sink, client, upstream), daemon=True
                ).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, *both: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:  # either side hanging up ends the whole connection (HTTP needs no half-close)
            for one in both:
                with contextlib.suppress(OSError):
                    one.close()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


@pytest.fixture
def proxy_a(orthanc_a: LocalOrthanc) -> Iterator[TcpProxy]:
    proxy = TcpProxy(orthanc_a.http_port)
    yield proxy
    proxy.close()


@pytest.fixture
def client_via_proxy(proxy_a: TcpProxy) -> Iterator[Orthanc]:
    with Orthanc(server_from_url(proxy_a.url())) as client:
        yield client


def name_a_again(config_file: Path, orthanc_a: LocalOrthanc) -> None:
    """A second configured name, `a2`, for server A."""
    with config_file.open("a") as toml:
        toml.write(f'\n[servers.a2]\nurl = "{orthanc_a.url}"\nuser = "{USER}"\npassword = "{PASSWORD}"\n')


def spellings_of_a(orthanc_a: LocalOrthanc, proxy: TcpProxy) -> list[tuple[str, str]]:
    """Server A as the destination of a run from the configured name `a`, and how it is found out."""
    return [
        (f"http://{USER}:{PASSWORD}@localhost:{orthanc_a.http_port}", "the same address"),
        ("a2", "the same address"),  # see name_a_again
        (proxy.url(), "the same change log"),
    ]


def assert_refused(result: subprocess.CompletedProcess, why: str) -> None:
    """Exit status 2 and one clear line, without the password."""
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pacsflow: error:")]
    assert len(errors) == 1 and "a source cannot be its own destination" in errors[0], result.stderr
    assert why in errors[0]
    assert PASSWORD not in result.stderr + result.stdout


def add_instance(client: Orthanc, seed: int, index: int = 0) -> dict:
    return client.upload(instance_bytes(Shape(instances=2, pixels=16, seed=seed), 0, 0, 0, index))


def test_spellings_of_one_address() -> None:
    assert same_address("http://127.0.0.1:8042", "http://localhost:8042/")
    assert same_address("http://127.0.0.1:8042", f"http://{socket.gethostname()}:8042")
    assert same_address("http://127.0.0.1:8042", "http://127.0.0.2:8042")  # all loopback is this machine
    assert same_address("http://127.0.0.1", "http://localhost:80")
    assert not same_address("http://127.0.0.1:8042", "http://127.0.0.1:8043")
    # one proxy port may serve several Orthancs under different paths
    assert not same_address("http://127.0.0.1:80/a", "http://127.0.0.1:80/b")
    assert not same_address("http://127.0.0.1:8042", "http://192.0.2.1:8042")


def test_one_server_under_another_spelling_is_the_same_address(
    orthanc_a: LocalOrthanc, client_a: Orthanc
) -> None:
    spelled = f"http://{USER}:{PASSWORD}@localhost:{orthanc_a.http_port}"
    with Orthanc(server_from_url(spelled)) as other:
        assert compare_servers(client_a, other).same is True
        with pytest.raises(ConfigError) as refused:
            check_not_source(client_a, other)
    message = str(refused.value)
    assert "is the source A (http://127.0.0.1:" in message and "(the same address)" in message
    assert PASSWORD not in message and "\n" not in message


def test_a_server_behind_another_address_is_known_by_its_change_log(
    client_a: Orthanc, client_via_proxy: Orthanc
) -> None:
    # empty and alike: nothing tells them apart yet
    verdict = compare_servers(client_a, client_via_proxy)
    assert verdict.same is None and "neither has changes" in verdict.why
    assert check_not_source(client_a, client_via_proxy) == verdict
    seq = client_a.get_json("/changes", last="")["Last"] + 1
    add_instance(client_a, 80)
    assert compare_servers(client_a, client_via_proxy).why == "the same change log"
    assert compare_servers(client_via_proxy, client_a).same is True
    assert compare_servers(client_a, client_via_proxy, seq=seq).same is True
    with pytest.raises(ConfigError, match="the same change log"):
        check_not_source(client_a, client_via_proxy)


def test_two_servers_are_told_apart_empty_or_holding_the_same_study(
    client_a: Orthanc, client_b: Orthanc
) -> None:
    assert compare_servers(client_a, client_b).why == "different /system"
    for index in (0, 1):
        add_instance(client_a, 81, index)
    verdict = compare_servers(client_a, client_b)  # B empty, A not
    assert (verdict.same, verdict.why) == (False, "different change logs")
    add_instance(client_b, 81)
    assert compare_servers(client_a, client_b).same is False
    assert compare_servers(client_b, client_a).same is False
    assert check_not_source(client_a, client_b).same is False


def test_a_dicom_node_on_the_source_s_own_dicom_port_is_the_source(
    orthanc_a: LocalOrthanc, orthanc_b: LocalOrthanc, client_a: Orthanc
) -> None:
    port = orthanc_a.dicom_port
    for host in ("127.0.0.1", "localhost", socket.gethostname()):
        # the AET does not matter: Orthanc stores whatever AET it is called by (DicomCheckCalledAet)
        assert is_own_dicom_port(client_a, ModalityConfig(aet="ANY", host=host, port=port))
    itself = ModalityConfig(aet=orthanc_a.aet, host="localhost", port=port, name="mine")
    with pytest.raises(
        ConfigError, match=r"^mine \(ORTHANCA@localhost:\d+\) is the DICOM port of the source"
    ):
        check_not_source(client_a, itself)
    other = ModalityConfig(aet=orthanc_b.aet, host="127.0.0.1", port=orthanc_b.dicom_port)
    assert not is_own_dicom_port(client_a, other)
    assert check_not_source(client_a, other).same is False
    assert not is_own_dicom_port(client_a, ModalityConfig(aet="ANY", host="192.0.2.1", port=port))


def _lan_address() -> str | None:
    """One of this machine's own non-loopback IPv4 addresses, if it has one."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        address = line.split()[3].split("/")[0]
        if not address.startswith("127."):
            return address
    return None


def test_the_machine_s_lan_address_is_this_machine_too() -> None:
    lan = _lan_address()
    if lan is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    assert same_address(f"http://{lan}:8042", "http://localhost:8042")
    assert not same_address("http://203.0.113.254:8042", "http://localhost:8042")  # TEST-NET-3: elsewhere
