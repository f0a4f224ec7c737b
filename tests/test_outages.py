"""A remote that is down pauses the run, spending no attempts; giving up on it is clean."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import ClassVar

import pytest

from pacsflow.config import Settings
from pacsflow.engine import EXIT_FAILED, EXIT_OK, Engine
from pacsflow.errors import Unreachable
from pacsflow.ledger import DONE, FAILED, PENDING, Item, Ledger, PlannedItem, exhausted_note
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.outages import Outages


class Remote:
    """A remote that can be switched off: items and probes that reach it while it is off fail."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.probes = 0

    def reach(self) -> None:
        if not self.up:
            raise Unreachable(
                f"cannot reach {self.name}: connection refused", remote=self.name, probe=self.probe
            )

    def probe(self) -> None:
        self.probes += 1
        if not self.up:
            raise Unreachable(f"cannot reach {self.name}: connection refused", remote=self.name)


@register
class TwoRemotes(Operation):
    """Items `x-N` talk to remote x, `y-N` to remote y; `timeout-N` always time out on y while y answers."""

    name = "two-remotes-test"
    remotes_per_item = True
    remotes: ClassVar[dict[str, Remote]] = {}
    calls: ClassVar[Counter[str]] = Counter()
    finished_at: ClassVar[dict[str, float]] = {}

    def plan(self) -> Iterable[PlannedItem]:
        for key in self.params["keys"]:
            yield PlannedItem("thing", key)

    @staticmethod
    def remote_of(item: Item) -> str:
        return "y" if item.key.startswith("timeout") else item.key.split("-")[0]

    def item_remotes(self, item: Item) -> Collection[str]:
        return [self.remote_of(item)]

    def do(self, item: Item) -> Outcome:
        self.calls[item.key] += 1
        remote = self.remotes[self.remote_of(item)]
        remote.reach()
        if item.key.startswith("timeout"):
            raise Unreachable("y: timed out on GET /one-huge-thing", remote="y", probe=remote.probe)
        time.sleep(0.02)
        self.finished_at[item.key] = time.monotonic()
        return Outcome(nbytes=1)


@register
class OneRemote(TwoRemotes):
    """Every item needs remote x: x down pauses the whole run."""

    name = "one-remote-test"
    remotes_per_item = False

    def item_remotes(self, item: Item) -> Collection[str] | None:
        return None


@pytest.fixture
def remotes(tmp_path: Path) -> dict[str, Remote]:
    TwoRemotes.remotes = {"x": Remote("x"), "y": Remote("y")}
    TwoRemotes.calls = Counter()
    TwoRemotes.finished_at = {}
    return TwoRemotes.remotes


def settings_for(tmp_path: Path) -> Settings:
    return Settings(ledger=f"sqlite:///{tmp_path / 'l.db'}", workers=2)  # default retries


def test_a_remote_down_pauses_the_run_and_spends_no_attempts(
    tmp_path: Path, remotes: dict[str, Remote]
) -> None:
    settings = settings_for(tmp_path)
    ledger = Ledger(settings.ledger)
    keys = [f"x-{n}" for n in range(200)]
    engine = Engine(ledger, settings)
    # down for longer than the default retry budget of 5 attempts with backoff (1+2+4+8 s) would cover
    went_down = threading.Timer(0.5, lambda: setattr(remotes["x"], "up", False))
    came_back = threading.Timer(18.0, lambda: setattr(remotes["x"], "up", True))
    went_down.start()
    came_back.start()
    result = engine.start(OneRemote(settings, {"keys": keys}))
    assert result.exit_code == EXIT_OK and result.counts == {DONE: 200}
    items = ledger.items(result.run_id)
    # items that met the outage went back without spending an attempt
    assert max(item.attempts for item in items) == 1
    assert 2 <= remotes["x"].probes <= 8  # probed with backoff, not hammered
    assert TwoRemotes.calls.total() < 200 + 2 * 4 * 2  # at most what was in flight was tried twice


def test_items_of_other_remotes_keep_going(tmp_path: Path, remotes: dict[str, Remote]) -> None:
    settings = settings_for(tmp_path)
    ledger = Ledger(settings.ledger)
    remotes["x"].up = False
    threading.Timer(4.0, lambda: setattr(remotes["x"], "up", True)).start()
    started = time.monotonic()
    keys = [key for n in range(40) for key in (f"x-{n}", f"y-{n}")]
    result = Engine(ledger, settings).start(TwoRemotes(settings, {"keys": keys}))
    assert result.exit_code == EXIT_OK and result.counts == {DONE: 80}
    y_done = max(at for key, at in TwoRemotes.finished_at.items() if key.startswith("y"))
    x_done = min(at for key, at in TwoRemotes.finished_at.items() if key.startswith("x"))
    assert y_done - started < 4.0  # y's items did not wait for x
    assert x_done - started >= 4.0


def test_a_remote_down_longer_than_give_up_after_stops_the_run_cleanly(
    tmp_path: Path, remotes: dict[str, Remote], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path)
    ledger = Ledger(settings.ledger)
    remotes["x"].up = False
    result = Engine(ledger, settings, give_up_after=3.0).start(
        OneRemote(settings, {"keys": [f"x-{n}" for n in range(20)]})
    )
    assert result.gave_up and result.exit_code == EXIT_FAILED and result.status == "stopped"
    assert result.counts == {PENDING: 20}  # nothing failed, nothing lost: resume continues
    assert "gave up: x has not answered since" in str(result.error)
    assert any("waiting for x (down since" in message for message in caplog.messages)
    assert ledger.run(result.run_id).status == "stopped"
    remotes["x"].up = True
    resumed = Engine(ledger, settings).resume(result.run_id)
    assert resumed.exit_code == EXIT_OK and resumed.counts == {DONE: 20}


def test_a_failure_on_a_remote_that_answers_spends_retries(
    tmp_path: Path, remotes: dict[str, Remote]
) -> None:
    settings = Settings(ledger=f"sqlite:///{tmp_path / 'l.db'}", workers=2, retries=2)
    ledger = Ledger(settings.ledger)
    result = Engine(ledger, settings).start(TwoRemotes(settings, {"keys": ["timeout-1", "y-1"]}))
    assert result.exit_code == EXIT_FAILED and result.counts == {DONE: 1, FAILED: 1}
    assert TwoRemotes.calls["timeout-1"] == 2  # its own fault: it used its attempts and failed


CRASHER = """
import os, signal, sys
from pacsflow.config import Settings
from pacsflow.engine import Engine
from pacsflow.ledger import Ledger, PlannedItem
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.outages import Outages

@register
class Crashing(Operation):
    name = "crashing-test"
    def plan(self):
        # the others in a later phase: only the crashing item is ever held when the process dies
        return [PlannedItem("thing", key, phase=int(key != "huge")) for key in self.params["keys"]]
    def do(self, item):
        if item.key == "huge":  # as an out-of-memory kill would: no exception, no report
            os.kill(os.getpid(), signal.SIGKILL)
        return Outcome()

settings = Settings(ledger=sys.argv[1], workers=1)
engine = Engine(Ledger(settings.ledger), settings)
if sys.argv[2] == "start":
    engine.start(Crashing(settings, {"keys": ["huge", "ok-1", "ok-2"]}), plan_only=True)
else:
    sys.exit(engine.resume("last").exit_code)
"""


def test_an_item_that_kills_its_process_fails_once_its_attempts_run_out(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}

    def run(step: str) -> int:
        return subprocess.run([sys.executable, "-c", CRASHER, url, step], env=env, timeout=60).returncode

    assert run("start") == 0
    codes = [run("resume") for _ in range(6)]
    # the default 5 attempts each killed the process; the sixth claim fails the item and the run finishes
    assert codes == [-9, -9, -9, -9, -9, EXIT_FAILED]
    ledger = Ledger(url)
    run_id = ledger.runs(1)[0].id
    failed = ledger.items(run_id, status=FAILED)
    assert [item.key for item in failed] == ["huge"]
    assert failed[0].last_error == exhausted_note(5)
    assert ledger.run(run_id).counts == {DONE: 2, FAILED: 1}


def test_listeners_hear_a_remote_go_down_and_answer_again(
    remotes: dict[str, Remote], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pacsflow.outages.FIRST_PROBE_DELAY", 0.0)
    outages = Outages(60.0)
    heard: list[tuple[str, bool]] = []
    stop, down = outages.listen(lambda outage, is_down: heard.append((outage.remote, is_down)))
    assert down == []
    remotes["x"].up = False
    assert outages.confirm(Unreachable("refused", remote="x", probe=remotes["x"].probe))
    assert heard == [("x", True)]
    # one that starts listening now is told in the list of remotes down, not again by a call
    late: list[tuple[str, bool]] = []
    stop_late, down = outages.listen(lambda outage, is_down: late.append((outage.remote, is_down)))
    assert [outage.remote for outage in down] == ["x"] and late == []
    stop_late()
    remotes["x"].up = True
    deadline = time.monotonic() + 5
    while outages and time.monotonic() < deadline:
        outages.poll()
        time.sleep(0.01)
    assert heard == [("x", True), ("x", False)] and late == []
    stop()
