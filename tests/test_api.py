"""The Python face: the service layer as README shows it (start a run, watch its events, read its result)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsflow import ConfigError, Pacsflow, RunResult
from pacsflow.events import ITEM_DONE, ITEM_FAILED, RUN_FINISHED, Event
from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc


def test_start_a_transfer_watch_its_events_read_its_result(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc, orthanc_b: LocalOrthanc
) -> None:
    seen: list[Event] = []
    with Pacsflow(config=config_file) as pf:
        populated = pf.start("populate", {"to": "a", "shape": {"patients": 2, "instances": 3, "pixels": 8}})
        assert populated.exit_code == 0 and populated.counts == {"done": 6}
        result = pf.start(
            "transfer",
            {"from": "a", "to": "b"},
            handlers=[(ITEM_DONE, seen.append), (ITEM_FAILED, seen.append), (RUN_FINISHED, seen.append)],
        )
        shown = pf.show(result.run_id)
    assert isinstance(result, RunResult) and result.status == "done" and result.exit_code == 0
    assert sorted(client_b.ids("instances")) == sorted(client_a.ids("instances"))
    done = [event for event in seen if event.type == ITEM_DONE]
    assert len(done) == result.counts["done"]  # one event per item, as the ledger counts them
    assert sum(event.nbytes for event in done) == result.bytes
    assert seen[-1].type == RUN_FINISHED and seen[-1].status == "done"
    assert any(line.startswith("operation  transfer") for line in shown)


def test_bad_parameters_are_refused_before_a_run_exists(workdir: Path, config_file: Path) -> None:
    with Pacsflow(config=config_file) as pf:
        with pytest.raises(ConfigError, match="--via"):
            pf.start("transfer", {"from": "a", "to": "b", "via": "carrier-pigeon"})
        assert pf.runs() == []
