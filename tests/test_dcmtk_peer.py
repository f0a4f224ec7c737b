"""The dcmqrscp test peer (tests/dcmtk_peer.py) works: it stores, finds, answers C-GET and C-MOVE, logs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacsflow import dimse
from pacsflow.sandbox import free_port
from pacsflow.synthetic import SOP_CLASSES, Shape, instance_bytes, instance_keys, instance_path, make_instance
from tests.dcmtk_peer import Dcmqrscp

SHAPE = Shape(patients=2, studies=1, series=2, instances=3, pixels=16, seed=31)
STORAGE_CLASSES = sorted(set(SOP_CLASSES.values()))
DEST_AET = "PFSTORE"
SUCCESS, MOVE_DESTINATION_UNKNOWN = 0x0000, 0xA801


def _uids(p: int, se: int | None = None) -> set[str]:
    """SOPInstanceUIDs of patient P's study, or of its series SE only."""
    return {
        make_instance(SHAPE, *key).SOPInstanceUID
        for key in instance_keys(SHAPE)
        if key[0] == p and (se is None or key[2] == se)
    }


def _study(p: int) -> str:
    return make_instance(SHAPE, p, 0, 0, 0).StudyInstanceUID


def _series(p: int, se: int) -> str:
    return make_instance(SHAPE, p, 0, se, 0).SeriesInstanceUID


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """SHAPE's 12 instances as files: 2 patients, 1 study each, 2 series of 3."""
    root = tmp_path_factory.mktemp("synthetic")
    paths = []
    for key in instance_keys(SHAPE):
        path = instance_path(root, SHAPE, *key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(instance_bytes(SHAPE, *key))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def dest_port() -> int:
    """The port of the storage SCP that test_c_move starts: the peer needs it in its config first."""
    return free_port()


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory, files: list[Path], dest_port: int) -> Iterator[Dcmqrscp]:
    """One running peer holding every file, that may C-MOVE to DEST_AET."""
    with Dcmqrscp(
        tmp_path_factory.mktemp("dcmqrscp"), move_destinations={DEST_AET: ("127.0.0.1", dest_port)}
    ) as server:
        server.store(files)
        yield server


def test_stored_files_are_found_by_series(peer: Dcmqrscp) -> None:
    keys = {"StudyInstanceUID": _study(0), "SeriesInstanceUID": "", "NumberOfSeriesRelatedInstances": ""}
    found = dimse.find(peer.modality, "PACSFLOW", "SERIES", keys)
    assert sorted(answer["SeriesInstanceUID"] for answer in found) == sorted([_series(0, 0), _series(0, 1)])
    # dcmqrscp 3.6.7 does not count instances: it leaves NumberOfSeriesRelatedInstances out of its answers
    assert [answer["NumberOfSeriesRelatedInstances"] for answer in found] == ["", ""]
    # so the count comes from an IMAGE-level C-FIND
    assert dimse.study_instance_uids(peer.modality, "PACSFLOW", _study(0)) == _uids(0)


def test_non_ascii_names_come_back_intact(peer: Dcmqrscp) -> None:
    name = str(make_instance(SHAPE, 1, 0, 0, 0).PatientName)
    assert not name.isascii()  # what the peer's default answer character set (ASCII) cannot hold
    found = dimse.find(peer.modality, "PACSFLOW", "STUDY", {"StudyInstanceUID": _study(1), "PatientName": ""})
    assert found == [{"StudyInstanceUID": _study(1), "PatientName": name}]


def _get(peer: Dcmqrscp, study: str, series: str) -> tuple[list[int], list[str]]:
    """C-GET one series: the statuses, and the SOPInstanceUIDs it sent us."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset.SOPInstanceUID)
        return SUCCESS

    ae = AE(ae_title="PACSFLOW")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for uid in STORAGE_CLASSES:
        ae.add_requested_context(uid)
    # C-GET sends the instances back on our association: we take the SCP role for the storage classes
    roles = [build_role(uid, scp_role=True) for uid in STORAGE_CLASSES]
    assoc = ae.associate(
        "127.0.0.1", peer.port, ae_title=peer.aet, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study
    query.SeriesInstanceUID = series
    try:
        statuses = [
            int(status.Status)
            for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
        ]
    finally:
        assoc.release()
    return statuses, received


def test_c_get_of_a_series_brings_each_instance(peer: Dcmqrscp) -> None:
    statuses, received = _get(peer, _study(1), _series(1, 1))
    assert statuses[-1] == SUCCESS
    assert sorted(received) == sorted(_uids(1, se=1))


def _move(peer: Dcmqrscp, study: str, destination: str) -> list[int]:
    ae = AE(ae_title="PACSFLOW")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", peer.port, ae_title=peer.aet)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    try:
        return [
            int(status.Status)
            for status, _ in assoc.send_c_move(query, destination, StudyRootQueryRetrieveInformationModelMove)
        ]
    finally:
        assoc.release()


def test_c_move_sends_each_instance_to_the_destination(peer: Dcmqrscp, dest_port: int) -> None:
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset.SOPInstanceUID)
        return SUCCESS

    scp = AE(ae_title=DEST_AET)
    for uid in STORAGE_CLASSES:
        scp.add_supported_context(uid)
    server = scp.start_server(
        ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        statuses = _move(peer, _study(0), DEST_AET)
    finally:
        server.shutdown()
    assert statuses[-1] == SUCCESS
    assert sorted(received) == sorted(_uids(0))


def test_c_move_to_an_aet_not_in_its_config_fails(peer: Dcmqrscp) -> None:
    assert _move(peer, _study(0), "NOBODY") == [MOVE_DESTINATION_UNKNOWN]


def test_requests_lists_each_request_in_time_order(peer: Dcmqrscp) -> None:
    time.sleep(0.01)  # the earlier tests' requests end a few milliseconds before the window opens
    started = time.time()
    dimse.echo(peer.modality, "PACSFLOW")
    dimse.find(peer.modality, "PACSFLOW", "STUDY", {"StudyInstanceUID": ""})
    _get(peer, _study(0), _series(0, 1))
    _move(peer, _study(1), "NOBODY")
    ended = time.time()
    # the log keeps milliseconds: a request in the first millisecond of the window is logged just before it
    window = [(stamp, kind) for stamp, kind in peer.requests() if started - 0.001 <= stamp <= ended]
    kinds = [kind for _, kind in window]
    # the GET's instances come back as C-STOREs that the peer sends: no STORE request
    assert kinds == ["ASSOCIATE", "ECHO", "ASSOCIATE", "FIND", "ASSOCIATE", "GET", "ASSOCIATE", "MOVE"]
    stamps = [stamp for stamp, _ in window]
    assert stamps == sorted(stamps) and stamps[0] < stamps[-1]
    # the earlier requests are there too, before the window: the fixture's store at least
    before = [kind for stamp, kind in peer.requests() if stamp < started - 0.001]
    assert before.count("STORE") == SHAPE.total


def test_a_restart_keeps_the_archive_and_the_log_but_not_the_probes(
    tmp_path: Path, files: list[Path]
) -> None:
    with Dcmqrscp(tmp_path) as server:
        server.store(files[:3])
        first = server.process
        server.restart()
        assert server.process is not first and first is not None and first.poll() is not None
        assert dimse.study_instance_uids(server.modality, "PACSFLOW", _study(0)) == _uids(0, se=0)
        # two starts, two readiness probes: neither is listed, only the store's and the find's associations
        assert [kind for _, kind in server.requests()] == [
            "ASSOCIATE",
            "STORE",
            "STORE",
            "STORE",
            "ASSOCIATE",
            "FIND",
        ]
    assert server.process is None


def test_with_refuse_unknown_an_unknown_aet_is_rejected_for_good(tmp_path: Path) -> None:
    rejections: list[tuple[int, int, int]] = []

    def on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejections.append((event.pdu.result, event.pdu.source, event.pdu.reason_diagnostic))

    destinations = {"PACSFLOW": ("127.0.0.1", free_port())}
    with Dcmqrscp(tmp_path, move_destinations=destinations, refuse_unknown=True) as server:
        dimse.echo(server.modality, "PACSFLOW")
        ae = AE(ae_title="STRANGER")
        ae.add_requested_context(Verification)
        # the PDU itself, not assoc.is_rejected: dcmqrscp closes the connection right after its A-ASSOCIATE-RJ
        # and pynetdicom 3.0 then reports now and then (7 in 200 here) an abort instead of the rejection
        assoc = ae.associate(
            "127.0.0.1", server.port, ae_title=server.aet, evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)]
        )
        assert not assoc.is_established
    # permanent (1), by the service user (1), "called AE title not recognised" (7): dcmqrscp's reason for an
    # unknown calling AE title too
    assert rejections == [(1, 1, 7)]
