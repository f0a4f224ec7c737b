"""The Orthanc client against a real Orthanc 1.10: IDs, capabilities, payloads without gzip, errors."""

from __future__ import annotations

import httpx
import pytest

from pacsflow.config import ServerConfig
from pacsflow.dicomfiles import read_uids
from pacsflow.errors import NotFound, ServerError, Unauthorized, Unreachable
from pacsflow.orthanc import Orthanc, orthanc_id, parse_version, route
from pacsflow.sandbox import LocalOrthanc, free_port
from pacsflow.synthetic import Shape, instance_bytes


def test_offline_ids_match_the_server(client_a: Orthanc) -> None:
    data = instance_bytes(Shape(seed=5), 0, 0, 0, 0)
    uids = read_uids(data)
    answer = client_a.upload(data)
    assert answer["Status"] == "Success"
    assert answer["ID"] == uids.instance_id
    assert answer["ParentStudy"] == uids.study_id
    assert answer["ParentPatient"] == orthanc_id(uids.patient_id)
    assert answer["ParentSeries"] == orthanc_id(uids.patient_id, uids.study_uid, uids.series_uid)
    assert client_a.upload(data)["Status"] == "AlreadyStored"


def test_capabilities_of_orthanc_1_10(client_a: Orthanc) -> None:
    caps = client_a.capabilities()
    assert caps.version_tuple[:2] >= (1, 10)
    assert caps.labels is (caps.version_tuple >= (1, 12))
    assert caps.c_get is (caps.version_tuple >= (1, 12, 6))
    assert parse_version("1.12.6") >= (1, 12, 6) > parse_version("1.12.5")
    assert parse_version("mainline") > parse_version("1.99.0")


def test_instance_file_comes_back_whole_and_uncompressed(client_a: Orthanc, orthanc_a: LocalOrthanc) -> None:
    data = instance_bytes(Shape(seed=6, pixels=128), 0, 0, 0, 0)
    instance = client_a.upload(data)["ID"]
    assert client_a.instance_file(instance) == data
    auth = (orthanc_a.user, orthanc_a.password)
    gzipped = httpx.get(f"{orthanc_a.url}/instances/{instance}/file", auth=auth)
    plain = httpx.get(
        f"{orthanc_a.url}/instances/{instance}/file", auth=auth, headers={"Accept-Encoding": "identity"}
    )
    # Orthanc 1.10 gzips for a default client; our identity header is what prevents it.
    assert gzipped.headers.get("content-encoding") == "gzip"
    assert "content-encoding" not in plain.headers


def test_wrong_password_is_unauthorized(orthanc_a: LocalOrthanc) -> None:
    config = ServerConfig(url=orthanc_a.url, user=orthanc_a.user, password="wrong", name="a")
    with (
        Orthanc(config) as client,
        pytest.raises(Unauthorized, match=r"a \(http://127.0.0.1:\d+\): the server refused user .alice."),
    ):
        client.system()


def test_unreachable_server_is_reported_without_long_retries() -> None:
    config = ServerConfig(url=f"http://127.0.0.1:{free_port()}", timeout=2)
    with Orthanc(config, retries=1) as client, pytest.raises(Unreachable, match="connection refused"):
        client.system()


def test_not_found_and_server_messages(client_a: Orthanc) -> None:
    with pytest.raises(NotFound):
        client_a.resource("studies", "00000000-00000000-00000000-00000000-00000000")
    with pytest.raises(ServerError) as info:
        client_a.upload(b"this is not a DICOM file at all" * 10)
    assert info.value.status == 400
    assert not info.value.transient
    assert "Bad file format" in str(info.value)


def test_missing_study_has_no_instances(client_a: Orthanc) -> None:
    assert client_a.instance_ids_of("studies", orthanc_id("nobody", "1.2.3")) == []


def test_payload_posts_use_http_client_unless_a_proxy_is_set(
    orthanc_a: LocalOrthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ):
        monkeypatch.delenv(key, raising=False)
    with Orthanc(orthanc_a.server_config()) as client:
        assert client._payloads is not None
        answer = client.upload(instance_bytes(Shape(seed=7), 0, 0, 0, 0))
        assert answer["Status"] == "Success"  # through http.client, with basic auth
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    with Orthanc(orthanc_a.server_config()) as client:
        assert client._payloads is None  # httpx honours the proxy; http.client would bypass it


def test_messages_name_routes_not_ids(client_a: Orthanc) -> None:
    # Orthanc IDs are hashes of patient IDs and UIDs: logs see the route, `detail` keeps the path
    missing = "0123abcd-0123abcd-0123abcd-0123abcd-0123abcd"
    with pytest.raises(NotFound) as caught:
        client_a.resource("studies", missing)
    assert missing not in caught.value.reason and "/studies/{id} not found" in caught.value.reason
    assert caught.value.detail == f"/studies/{missing}"
    assert route("/tools/find/1.2.840.113619.2.55") == "/tools/find/{uid}"
