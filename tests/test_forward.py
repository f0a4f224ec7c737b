"""forward: stable studies go to every destination and leave the source only when all of them hold them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pacsflow.config import Settings
from pacsflow.errors import ConfigError, TransientError
from pacsflow.ledger import DONE, RUNNING, Item, PlannedItem
from pacsflow.ops.transfer import Forward
from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc, free_port
from pacsflow.synthetic import Shape, instance_bytes
from tests.conftest import PACSFLOW, PASSWORD, USER, latest_run, run_cli, wait_for
from tests.test_identity import TcpProxy, assert_refused, name_a_again, spellings_of_a


@pytest.fixture
def orthanc_c(tmp_path: Path) -> Iterator[LocalOrthanc]:
    server = LocalOrthanc("C", tmp_path / "orthanc-c", aet="ORTHANCC").start()
    yield server
    server.kill()


@pytest.fixture
def orthanc_self(tmp_path: Path) -> Iterator[LocalOrthanc]:
    """An Orthanc that lists its own DICOM port among its DicomModalities (so it can C-STORE to itself)."""
    port = free_port()
    server = LocalOrthanc(
        "S",
        tmp_path / "orthanc-s",
        aet="ORTHANCS",
        dicom_port=port,
        modalities={"itself": ["ORTHANCS", "127.0.0.1", port]},
    ).start()
    yield server
    server.kill()


def study_shape(seed: int, count: int = 3) -> Shape:
    return Shape(patients=1, series=1, instances=count, pixels=16, seed=seed)


def add_study(client: Orthanc, seed: int, count: int = 3) -> str:
    shape = study_shape(seed, count)
    answers = [client.upload(instance_bytes(shape, 0, 0, 0, i)) for i in range(count)]
    return answers[0]["ParentStudy"]


def start_forwarder(workdir: Path, config_file: Path, *args: str) -> subprocess.Popen:
    """`pacsflow forward ARGS --poll 0.3` in the background, with the settings of CONFIG_FILE only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    log = (workdir / "forward.log").open("a")
    return subprocess.Popen(
        [*PACSFLOW, "--config", str(config_file), "forward", *args, "--poll", "0.3"],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def exit_code_after(workdir: Path, forwarder: subprocess.Popen, act: Callable[[], object]) -> int:
    """Once the forward run exists, ACT; then the forwarder's exit status (it must end by itself)."""
    try:
        wait_for(lambda: latest_run(workdir) is not None, "the forward run", forwarder)
        act()
        return forwarder.wait(timeout=60)
    finally:
        if forwarder.poll() is None:
            forwarder.kill()


def stop_forwarder(workdir: Path, forwarder: subprocess.Popen) -> None:
    forwarder.send_signal(signal.SIGTERM)
    code = forwarder.wait(timeout=30)
    assert code == 130, (workdir / "forward.log").read_text()


def stable_study_change(client: Orthanc, study: str) -> dict[str, Any]:
    """The StableStudy record of STUDY in the server's change log, once Orthanc wrote it (StableAge 2 s)."""
    found: dict[str, Any] = {}

    def written() -> bool:
        for change in client.get_json("/changes", since=0, limit=1000)["Changes"]:
            if change["ChangeType"] == "StableStudy" and change["ID"] == study:
                found.update(change)
        return bool(found)

    wait_for(written, "the study's StableStudy change")
    return found


@contextmanager
def checked_forward(settings: Settings, *destinations: str) -> Iterator[Forward]:
    """The forward operation from server `a`, checked as a run's start checks it, closed afterwards."""
    forward = Forward(settings, {"from": "a", "to": list(destinations), "workers": 2})
    try:
        forward.preflight()
        yield forward
    finally:
        forward.close()


def items_of_stable_study(forward: Forward, client: Orthanc, study: str) -> list[Item]:
    """The items of the study's StableStudy change, as workers get them from the ledger."""
    planned = forward.items_for(stable_study_change(client, study))
    return [as_item(number, item) for number, item in enumerate(planned)]


def as_item(number: int, planned: PlannedItem) -> Item:
    """A planned item as a worker gets it from the ledger."""
    return Item(
        id=number,
        run_id="test",
        phase=planned.phase,
        kind=planned.kind,
        key=planned.key,
        payload=planned.payload,
        status=RUNNING,
        attempts=1,
        last_error=None,
        bytes=0,
        result=None,
        worker=None,
    )


def test_forward_to_two_destinations_deletes_only_when_both_hold_the_study(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc, orthanc_c: LocalOrthanc
) -> None:
    first = add_study(client_a, 70)
    forwarder = start_forwarder(workdir, config_file, "--from", "a", "--to", "b", "--to", orthanc_c.url)
    c = Orthanc(orthanc_c.server_config())
    try:
        # a study that was waiting before the forwarder started: sent to both, then deleted
        wait_for(
            lambda: first not in client_a.ids("studies"), "the first study to leave the source", forwarder
        )
        assert first in client_b.ids("studies") and first in c.ids("studies")
        assert len(c.ids("instances")) == 3

        orthanc_c.kill()  # one destination goes down: the next study must stay on the source
        second = add_study(client_a, 71)
        wait_for(lambda: second in client_b.ids("studies"), "the second study on B", forwarder)
        # while C is still down, studies that arrive later reach B too: the feed is read on
        third = add_study(client_a, 72)
        wait_for(lambda: third in client_b.ids("studies"), "the third study on B while C is down", forwarder)
        time.sleep(3)
        assert {second, third} <= set(client_a.ids("studies")), "deleted although C never got it"

        orthanc_c.start()  # back: the waiting items are sent, then the studies leave the source
        wait_for(lambda: not client_a.ids("studies"), "both studies to leave the source", forwarder)
        assert {second, third} <= set(c.ids("studies")) and len(c.ids("instances")) == 9
    finally:
        c.close()
        stop_forwarder(workdir, forwarder)


def test_a_series_that_arrives_after_its_study_left_is_forwarded_too(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    shape = study_shape(73, 2)
    study = add_study(client_a, 73, 2)
    forwarder = start_forwarder(workdir, config_file, "--from", "a", "--to", "b")
    try:
        wait_for(lambda: not client_a.ids("instances"), "the study to leave the source", forwarder)
        assert len(client_b.instance_ids_of("studies", study)) == 2
        # the same patient and study, a second series: a new StableStudy change of the same study
        late = [client_a.upload(instance_bytes(shape, 0, 0, 1, i)) for i in range(2)]
        assert {answer["ParentStudy"] for answer in late} == {study}
        wait_for(
            lambda: not client_a.ids("instances") and len(client_b.instance_ids_of("studies", study)) == 4,
            "the late series on the destination and gone from the source",
            forwarder,
        )
        assert len(client_b.resource("studies", study)["Series"]) == 2
    finally:
        stop_forwarder(workdir, forwarder)


def test_delete_spares_an_instance_that_arrived_after_the_forward(
    settings: Settings, client_a: Orthanc, client_b: Orthanc
) -> None:
    study = add_study(client_a, 74)
    verified = sorted(client_a.ids("instances"))
    with checked_forward(settings, "b") as forward:
        send, delete = items_of_stable_study(forward, client_a, study)
        assert forward.do(send).result == {"instances": 3, "copied": 3}
        late = client_a.upload(instance_bytes(study_shape(74), 0, 0, 0, 3))  # a fourth instance of the study
        assert late["ParentStudy"] == study
        outcome = forward.do(delete)
    assert client_a.ids("instances") == [late["ID"]]
    assert sorted(client_b.ids("instances")) == verified
    assert (outcome.status, outcome.result) == (DONE, {"deleted": 3, "kept": 1})
    assert outcome.note == "1 kept: they arrived after the change; its next change forwards them"


def test_delete_keeps_what_a_destination_lost_and_tries_again(
    settings: Settings, client_a: Orthanc, client_b: Orthanc
) -> None:
    study = add_study(client_a, 75)
    with checked_forward(settings, "b") as forward:
        send, delete = items_of_stable_study(forward, client_a, study)
        forward.do(send)
        lost = client_b.ids("instances")[0]
        client_b.delete_resource("instances", lost)  # someone deletes it on the destination meanwhile
        with pytest.raises(
            TransientError,
            match=r"^1 of 3 instances is not on b \(http://127.0.0.1:\d+\); it stays on the source$",
        ):
            forward.do(delete)
    assert client_a.ids("instances") == [lost]


def test_delete_checks_again_that_a_destination_is_not_the_source(
    settings: Settings, orthanc_a: LocalOrthanc, client_a: Orthanc
) -> None:
    proxy = TcpProxy(orthanc_a.http_port)  # the source again, at another address
    # both empty and alike when the run starts: nothing tells them apart yet
    try:
        with checked_forward(settings, proxy.url()) as forward:
            study = add_study(client_a, 76)
            send, delete = items_of_stable_study(forward, client_a, study)
            assert forward.do(send).result == {"instances": 3, "copied": 0}
            with pytest.raises(ConfigError, match=r"is the source a \(.*\) itself \(the same change log\)"):
                forward.do(delete)
    finally:
        proxy.close()
    assert len(client_a.ids("instances")) == 3


def test_each_new_instance_goes_between_two_fresh_servers_though_their_change_logs_look_alike(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    # B, fed from A within the same second, logs each change under A's Seq, type, ID and date: the
    # change log alone would call them one server. Storing an instance A holds as new proves otherwise.
    forwarder = start_forwarder(workdir, config_file, "--from", "a", "--to", "b", "--trigger", "new-instance")
    try:
        wait_for(lambda: latest_run(workdir) is not None, "the forward run", forwarder)
        study = add_study(client_a, 77, count=1)
        wait_for(lambda: not client_a.ids("instances"), "the instance to leave the source", forwarder)
        assert study in client_b.ids("studies") and len(client_b.ids("instances")) == 1
    finally:
        stop_forwarder(workdir, forwarder)
    assert "is the source" not in (workdir / "forward.log").read_text()


def test_items_of_each_change_have_their_own_keys(settings: Settings) -> None:
    forward = Forward(
        settings, {"from": "a", "to": ["b", f"http://{USER}:{PASSWORD}@127.0.0.1:1"], "workers": 2}
    )
    try:
        change = {"Seq": 41, "ChangeType": "StableStudy", "ID": "st", "Date": "20261123T083001"}
        keys = [item.key for item in forward.items_for(change)]
        again = [item.key for item in forward.items_for({**change, "Seq": 57})]
    finally:
        forward.close()
    assert keys == ["f/41/st/0", "f/41/st/1", "d/41/st"]
    assert again == ["f/57/st/0", "f/57/st/1", "d/57/st"]


def test_forward_refuses_the_source_under_another_spelling(
    workdir: Path, config_file: Path, orthanc_a: LocalOrthanc, client_a: Orthanc
) -> None:
    add_study(client_a, 77)
    name_a_again(config_file, orthanc_a)
    proxy = TcpProxy(orthanc_a.http_port)
    try:
        for spelling, why in spellings_of_a(orthanc_a, proxy):
            forward = ["forward", "--from", "a", "--to", "b", "--to", spelling, "--poll", "0.3"]
            result = run_cli(*forward, cwd=workdir, timeout=60)
            assert_refused(result, why)
    finally:
        proxy.close()
    assert len(client_a.ids("instances")) == 3


def test_forward_stops_when_an_empty_source_turns_out_to_be_its_destination(
    workdir: Path, config_file: Path, orthanc_a: LocalOrthanc, client_a: Orthanc
) -> None:
    proxy = TcpProxy(orthanc_a.http_port)
    forwarder = start_forwarder(workdir, config_file, "--from", "a", "--to", proxy.url())
    try:
        # its run starts once the preflight accepted the proxy: A was empty, nothing told them apart yet
        code = exit_code_after(workdir, forwarder, lambda: add_study(client_a, 78))
    finally:
        proxy.close()
    output = (workdir / "forward.log").read_text()
    assert code == 2, output
    assert "pacsflow: error: " in output and "itself (the same change log)" in output
    assert len(client_a.ids("instances")) == 3


def test_forward_gives_up_on_a_destination_down_too_long(
    workdir: Path, config_file: Path, client_a: Orthanc, orthanc_c: LocalOrthanc
) -> None:
    forwarder = start_forwarder(
        workdir, config_file, "--from", "a", "--to", orthanc_c.url, "--give-up-after", "2s"
    )

    def destination_down_then_a_study() -> None:
        orthanc_c.kill()
        add_study(client_a, 69)

    code = exit_code_after(workdir, forwarder, destination_down_then_a_study)
    output = (workdir / "forward.log").read_text()
    assert code == 1, output
    assert f"pacsflow: error: gave up: {orthanc_c.url} has not answered since" in output
    assert len(client_a.ids("instances")) == 3


def test_forward_and_transfer_refuse_the_source_s_own_dicom_port(
    workdir: Path, orthanc_self: LocalOrthanc
) -> None:
    with Orthanc(orthanc_self.server_config()) as source:
        add_study(source, 79)
        for host in ("127.0.0.1", "localhost"):
            node = f"{orthanc_self.aet}@{host}:{orthanc_self.dicom_port}"
            for command in (["forward", "--poll", "0.3"], ["transfer"]):
                result = run_cli(*command, "--from", orthanc_self.url, "--to", node, cwd=workdir, timeout=60)
                assert result.returncode == 2, result.stdout + result.stderr
                assert f"is the DICOM port of the source {orthanc_self.url}" in result.stderr
        assert len(source.ids("instances")) == 3


def test_forward_waits_for_its_source_and_gives_up_after_the_limit(
    workdir: Path, config_file: Path, orthanc_a: LocalOrthanc, client_b: Orthanc
) -> None:
    forwarder = start_forwarder(workdir, config_file, "--from", "a", "--to", "b", "--give-up-after", "6s")
    try:
        # the change feed's server goes down: the follower waits for it, then gives up
        code = exit_code_after(workdir, forwarder, orthanc_a.kill)
    finally:
        orthanc_a.start()
    output = (workdir / "forward.log").read_text()
    assert code == 1, output
    assert "waiting for a (down since" in output
    assert "pacsflow: error: gave up: a has not answered since" in output
