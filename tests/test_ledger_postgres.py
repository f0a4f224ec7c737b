"""The shared ledger on a real PostgreSQL: row-locked claims never give one item to two workers."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path

from pacsflow.config import Settings
from pacsflow.engine import Engine
from pacsflow.ledger import DONE, Ledger, PlannedItem
from tests.test_engine import Scripted


def test_concurrent_claims_never_overlap(postgres_url: str) -> None:
    ledger = Ledger(postgres_url)
    run = ledger.create_run("test", {}, run_id=f"pg-{uuid.uuid4().hex[:8]}")
    ledger.add_items(run, [PlannedItem("thing", f"k{i}") for i in range(400)])
    taken: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            got = ledger.claim(run, name, 7, 60)
            if not got:
                return
            with lock:
                taken.extend(item.id for item in got)
            for item in got:
                ledger.complete(item, name)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 400 and len(set(taken)) == 400
    assert ledger.run(run).counts == {DONE: 400}


def test_two_engines_share_a_run_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    Scripted.calls = Counter()
    settings = Settings(ledger=postgres_url, workers=3)
    keys = [f"ok-{i}" for i in range(300)]
    planned = Engine(Ledger(postgres_url), settings).start(Scripted(settings, {"keys": keys}), plan_only=True)
    results = []

    def join() -> None:
        results.append(Engine(Ledger(postgres_url), settings).resume(planned.run_id))

    threads = [threading.Thread(target=join) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    items = Ledger(postgres_url).items(planned.run_id)
    assert all(item.status == DONE and item.attempts == 1 for item in items)
    assert set(Scripted.calls.values()) == {1} and len(Scripted.calls) == 300
    assert len({item.worker for item in items}) == 2
