"""Schema migrations: a ledger from before them upgrades in place; a new one starts at the newest revision."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import make_url

from pacsflow.errors import ConfigError
from pacsflow.ledger import DONE, FAILED, PENDING, RUNNING, SKIPPED, Ledger, PlannedItem
from pacsflow.ledger import migrate as migrate_module
from pacsflow.ledger.migrate import FIRST, MIGRATIONS
from pacsflow.ledger.schema import REVISION, metadata
from tests.fixtures import make_ledger_v1

FIXTURES = Path(__file__).parent / "fixtures"


def _v1_copy(tmp_path: Path) -> str:
    """A copy of the ledger today's code wrote before migrations (see fixtures/make_ledger_v1.py)."""
    target = tmp_path / "ledger.db"
    tmp_path.mkdir(exist_ok=True)
    shutil.copyfile(FIXTURES / "ledger-v1.db", target)
    target.chmod(0o600)
    return f"sqlite:///{target}"


def _revisions(url: str) -> list[str] | None:
    """What alembic_version holds, or None when there is no such table."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()


@pytest.fixture
def fresh_postgres(postgres_url: str) -> Iterator[str]:
    """An empty database of its own on the test cluster."""
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a ledger that does not exist yet, on each database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'new.db'}"
    return request.getfixturevalue("fresh_postgres")


def test_the_schema_module_names_the_newest_revision() -> None:
    script = ScriptDirectory(str(MIGRATIONS))
    assert script.get_heads() == [REVISION]
    assert [rev.revision for rev in script.walk_revisions()][-1] == FIRST


def test_a_new_ledger_is_at_the_newest_revision_with_exactly_the_schema(new_url: str) -> None:
    ledger = Ledger(new_url)
    assert _revisions(new_url) == [REVISION]
    with ledger.engine.connect() as conn:
        # what the migrations made is what schema.py says, column for column, index for index
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    run = ledger.create_run("test", {"a": 1})
    ledger.add_items(run, [PlannedItem("thing", "k")])
    assert [item.key for item in ledger.claim(run, "w", 5, 60)] == ["k"]
    ledger.close()


def test_the_migrations_make_exactly_the_tables_a_new_ledger_is_created_with(new_url: str) -> None:
    # a new ledger is made from schema.py without Alembic: its revisions, run from nothing, must agree
    engine = create_engine(new_url)
    with engine.connect() as conn, conn.begin():
        migrate_module._migrate(conn, "new", MIGRATIONS)
    assert _revisions(new_url) == [REVISION]
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()
    assert _revisions(new_url) == [REVISION]


def test_a_ledger_from_before_migrations_upgrades_and_reads_back_the_same(tmp_path: Path) -> None:
    url = _v1_copy(tmp_path)
    assert _revisions(url) is None
    ledger = Ledger(url)
    assert _revisions(url) == [REVISION]
    expected = json.loads((FIXTURES / "ledger-v1.json").read_text())
    assert make_ledger_v1.dump(ledger) == expected
    upload = ledger.run(make_ledger_v1.UPLOAD)
    assert upload.counts == {DONE: 2, SKIPPED: 2, FAILED: 1, PENDING: 4, RUNNING: 1}
    assert ledger.checkpoint(make_ledger_v1.CLONE, "changes") == "17"
    ledger.close()
    assert make_ledger_v1.dump(Ledger(url)) == expected  # and again, now that it is stamped


def test_a_run_from_before_migrations_resumes(tmp_path: Path) -> None:
    ledger = Ledger(_v1_copy(tmp_path))
    run = make_ledger_v1.UPLOAD
    assert ledger.reclaim_dead(run) == 0  # its worker ran on another host: its lease ran out long ago
    claimed = ledger.claim(run, "w", 10, 60, max_attempts=5)
    # the item waiting for its retry, the one never tried, and the one whose worker died with it
    assert [(item.key, item.attempts) for item in claimed] == [
        ("/data/in/4.dcm", 2),
        ("/data/in/5.dcm", 2),
        ("/data/in/caf\\udce9.dcm", 1),
    ]
    phases = []
    while claimed:
        phases.append({item.phase for item in claimed})
        for item in claimed:
            assert ledger.complete(item, "w", nbytes=1)
        claimed = ledger.claim(run, "w", 10, 60, max_attempts=5)
    assert phases == [{0}, {1}, {2}]
    assert ledger.run(run).counts == {DONE: 7, SKIPPED: 2, FAILED: 1}
    assert ledger.retry_failed(run) == 1


def _old_tables(tmp_path: Path) -> MetaData:
    """The tables exactly as pacsflow made them before migrations: read back from the v1 fixture."""
    engine = create_engine(_v1_copy(tmp_path / "reflected"))
    tables = MetaData()
    tables.reflect(engine)
    engine.dispose()
    return tables


def _make_old_postgres_ledger(url: str, tmp_path: Path) -> None:
    """The tables pacsflow made with create_all before migrations, and a run in them."""
    tables = _old_tables(tmp_path)
    engine = create_engine(url)
    tables.create_all(engine)
    runs, items, checkpoints = (tables.tables[name] for name in ("runs", "items", "checkpoints"))
    with engine.begin() as conn:
        conn.execute(
            runs.insert().values(
                id="old-run", operation="test", params={"p": 1}, status="stopped", created_at=1, updated_at=1
            )
        )
        conn.execute(
            items.insert(),
            [
                {"run_id": "old-run", "phase": 0, "kind": "thing", "key": f"k{n}", "status": PENDING}
                | {"attempts": 0, "bytes": 0, "not_before": 0.0, "created_at": 1.0}
                for n in range(3)
            ],
        )
        conn.execute(checkpoints.insert().values(run_id="old-run", name="changes", value="9", updated_at=1))
    engine.dispose()


def test_a_postgres_ledger_from_before_migrations_is_stamped_and_upgraded(
    fresh_postgres: str, tmp_path: Path
) -> None:
    _make_old_postgres_ledger(fresh_postgres, tmp_path)
    assert _revisions(fresh_postgres) is None
    ledger = Ledger(fresh_postgres)
    assert _revisions(fresh_postgres) == [REVISION]
    with ledger.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    info = ledger.run("old-run")
    assert (info.params, info.status, info.counts) == ({"p": 1}, "stopped", {PENDING: 3})
    assert ledger.checkpoint("old-run", "changes") == "9"
    claimed = ledger.claim("old-run", "w", 10, 60)
    assert [item.key for item in claimed] == ["k0", "k1", "k2"]
    for item in claimed:
        ledger.complete(item, "w")
    assert ledger.run("old-run").counts == {DONE: 3}
    ledger.close()


NEXT = '''"""A revision for the test: one more column and an index."""

import sqlalchemy as sa
from alembic import op

revision = "next"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
        batch.create_index("ix_items_priority", ["run_id", "priority"])


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_index("ix_items_priority")
        batch.drop_column("priority")
'''


@pytest.fixture(params=["sqlite", "postgresql"])
def old_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ledger made before migrations: the SQLite fixture, or the old tables made on PostgreSQL."""
    if request.param == "sqlite":
        return _v1_copy(tmp_path)
    url = request.getfixturevalue("fresh_postgres")
    _make_old_postgres_ledger(url, tmp_path)
    return url


def test_a_new_revision_is_applied_when_a_ledger_is_opened(
    old_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "next.py").write_text(NEXT.replace("{head}", REVISION))
    monkeypatch.setattr(migrate_module, "MIGRATIONS", migrations)
    monkeypatch.setattr(migrate_module, "REVISION", "next")
    with caplog.at_level("INFO", logger="pacsflow"):
        ledger = Ledger(old_url)  # stamped as the first revision, then upgraded, in one go
    assert _revisions(old_url) == ["next"]
    assert f"upgraded from revision {FIRST} to next" in caplog.text
    with ledger.engine.connect() as conn:
        assert "priority" in {column["name"] for column in inspect(conn).get_columns("items")}
    if old_url.startswith("sqlite"):
        assert make_ledger_v1.dump(ledger) == json.loads((FIXTURES / "ledger-v1.json").read_text())
    else:
        assert ledger.run("old-run").counts == {PENDING: 3}
    ledger.close()
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="revision next, which this pacsflow does not know"):
        Ledger(old_url)  # an older pacsflow refuses a ledger a newer one upgraded, and says why


OPEN = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from pacsflow.ledger import Ledger
Ledger(sys.argv[1]).close()
print("alembic" in sys.modules)
"""


def test_opening_a_ledger_logs_nothing_and_needs_no_alembic_new_or_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    for _ in ("new", "up to date"):  # a new ledger is made from schema.py at once; then it is at head
        opened = subprocess.run([sys.executable, "-c", OPEN, url], capture_output=True, text=True, check=True)
        assert (opened.stdout.strip(), opened.stderr) == ("False", "")
    assert _revisions(url) == [REVISION]


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from pacsflow.ledger import Ledger
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
ledger = Ledger(url)
print(ledger.create_run("test", {}))
"""


def test_processes_opening_a_new_ledger_at_once_all_succeed(new_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT_ONCE, new_url, str(tmp_path / f"ready{n}"), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{n}").exists() for n in range(4)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    assert _revisions(new_url) == [REVISION]
    ledger = Ledger(new_url)
    assert len(ledger.runs()) == 4
    ledger.close()
