"""DICOM peers that abort or turn us away for now are outages (Unreachable, with a probe), not failures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from pacsflow import dimse
from pacsflow.config import ModalityConfig
from pacsflow.errors import RemoteError, Unreachable
from pacsflow.sandbox import free_port


def _peer(handlers: list, *, maximum_associations: int = 10) -> tuple[AE, ModalityConfig]:
    ae = AE(ae_title="PEER")
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.maximum_associations = maximum_associations
    port = free_port()
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    return ae, ModalityConfig(aet="PEER", host="127.0.0.1", port=port, name="peer")


@pytest.fixture
def aborting() -> Iterator[ModalityConfig]:
    """A real peer that aborts the association when asked a C-FIND (as a PACS reset at 3 a.m. does)."""

    def on_find(event: evt.Event) -> Iterator:
        event.assoc.abort()
        yield 0xC000, None

    ae, node = _peer([(evt.EVT_C_FIND, on_find)])
    yield node
    ae.shutdown()


@pytest.fixture
def busy() -> Iterator[ModalityConfig]:
    """A real peer that takes one association at a time: while one is open, others are rejected for now."""
    ae, node = _peer([], maximum_associations=1)
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    assoc = holder.associate(node.host, node.port, ae_title=node.aet)
    assert assoc.is_established
    yield node
    assoc.release()
    ae.shutdown()


def test_an_association_aborted_mid_find_is_unreachable(aborting: ModalityConfig) -> None:
    with pytest.raises(Unreachable) as caught:
        dimse.find(aborting, "PACSFLOW", "STUDY", {"StudyInstanceUID": ""}, timeout=10)
    assert caught.value.remote == "peer" and caught.value.probe is not None
    assert "aborted" in caught.value.reason


def test_an_association_rejected_for_now_is_unreachable(busy: ModalityConfig) -> None:
    with pytest.raises(Unreachable) as caught:
        dimse.echo(busy, "PACSFLOW", timeout=10)
    assert caught.value.remote == "peer"
    assert "rejected for now" in caught.value.reason


def test_an_association_rejected_for_good_is_not_an_outage() -> None:
    # a peer that requires a called AE title we do not give rejects us permanently: waiting cannot help
    ae = AE(ae_title="STRICT")
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    port = free_port()
    ae.start_server(("127.0.0.1", port), block=False)
    try:
        wrong = ModalityConfig(aet="SOMEONE", host="127.0.0.1", port=port, name="strict")
        with pytest.raises(RemoteError) as caught:
            dimse.echo(wrong, "PACSFLOW", timeout=10)
        assert not isinstance(caught.value, Unreachable)
        assert "association rejected" in caught.value.reason
    finally:
        ae.shutdown()
