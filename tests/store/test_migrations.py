"""Schema migrations (Alembic) on both backends: from an empty database, and from earlier versions with data."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.engine import Engine

from jobgraph.store import Store
from jobgraph.store.faults import StoreFault
from jobgraph.store.sql_records import migrate, schema_version
from jobgraph.store.sqlite_schema import SQLITE_SCHEMA_VERSION
from jobgraph.store.tables import SCHEMA_VERSION
from tests.store.test_store import run_into

NOON = datetime(2026, 11, 1, 12, 0)
"""A naive UTC time, as stores of 0001 and 0002 held them."""


def _time_text(engine: Engine) -> str:
    return "2026-11-01 12:00:00" if engine.dialect.name == "postgresql" else "20261101120000"


def test_an_empty_database_gets_the_whole_schema(store_url: str) -> None:
    store = Store(store_url)
    engine = create_engine(store_url)
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "task_runs", "attempts", "pipelines", "pipeline_versions", "fires", "leases"} <= tables
    assert {"jobs_run_stats", "task_logging_stats", "job_attempts"} <= set(inspect(engine).get_view_names())
    assert schema_version(engine) == SCHEMA_VERSION
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            kinds = {name: kind for name, kind in conn.execute(text(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'runs'"))}
            assert kinds["started_at"] == "timestamp with time zone"
            assert conn.execute(text("SELECT CAST('2026-11-01 12:00:00' AS DATETIME)")).scalar() == NOON
    store.close()
    engine.dispose()


def test_a_store_of_the_first_version_is_migrated_with_its_history(store_url: str) -> None:
    engine = create_engine(store_url)
    migrate(engine, to="0001")
    assert schema_version(engine) == "0001" and not inspect(engine).has_table("pipelines")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO runs (run_id, pipeline, state, run_attempt, started_at, scheduled_time, "
                          "finished_at, snapshot) VALUES ('r1', 'root_task', 'FAILED', 1, :t, :t, :t, '{}')"),
                     {"t": NOON})
        conn.execute(text("INSERT INTO task_runs (run_id, task, state, attempts, pool, image, predecessors, "
                          "is_finalizer, started_at, finished_at, duration_secs, error_message) VALUES "
                          "('r1', 't_myjob_3', 'FAILED', 1, 'p', 'i', '[]', :f, :t, :t, 2.0, 'boom')"),
                     {"t": NOON, "f": False})
    store = Store(store_url)
    assert schema_version(engine) == SCHEMA_VERSION
    assert store.run("r1").state == "FAILED" and [t.task for t in store.tasks("r1")] == ["t_myjob_3"]
    _, rows = store.view("task_logging_stats")
    moment = _time_text(engine)
    assert rows == [("r1", "t_myjob_3", "FAILED", None, moment, moment, 2, "boom", 1)]
    store.close()
    engine.dispose()


def _fill_0002(engine: Engine) -> None:
    """A store of 0002 with a run retried once: its job rows hold only their latest state."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO runs (run_id, pipeline, state, run_attempt, started_at, scheduled_time, "
                          "finished_at, snapshot, trigger) VALUES ('r2', 'root_task', 'SUCCEEDED', 2, :t, :t, :t, "
                          "'{}', 'manual')"), {"t": NOON})
        for task, attempts in (("t_myjob_1", 1), ("t_myjob_3", 2)):
            conn.execute(text("INSERT INTO task_runs (run_id, task, state, attempts, pool, image, predecessors, "
                              "is_finalizer, started_at, finished_at, duration_secs) VALUES "
                              "('r2', :task, 'SUCCEEDED', :n, 'p', 'i', '[]', :f, :t, :t, 1.0)"),
                         {"task": task, "n": attempts, "t": NOON, "f": False})
        for number, (task, attempt, status) in enumerate(
                (("t_myjob_1", 1, "DONE"), ("t_myjob_3", 1, "FAILED"), ("t_myjob_3", 2, "DONE")), start=1):
            conn.execute(text("INSERT INTO attempts (id, run_id, task, attempt, status, exit_code, log_path, "
                              "started_at, finished_at, duration_secs, created_date) VALUES "
                              "(:id, 'r2', :task, :attempt, :status, :code, 'log', :t, :t, 1.0, :t)"),
                         {"id": number, "task": task, "attempt": attempt, "status": status,
                          "code": 0 if status == "DONE" else 1, "t": NOON})
        conn.execute(text("INSERT INTO pipelines (name, version, state, schedule, anchor, next_fire_at, "
                          "failures_in_row, deployed_at) VALUES ('root_task', 'v1', 'ACTIVE', '59 MINUTE', :t, :t, "
                          "0, :t)"), {"t": NOON})


def test_a_store_of_0002_keeps_its_rows_and_times(store_url: str, tmp_path: Path) -> None:
    """Times were naive UTC: on PostgreSQL they must not move with the session's zone when they become aware."""
    engine = create_engine(store_url)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'ALTER DATABASE "{make_url(store_url).database}" SET timezone TO '
                              "'America/New_York'"))
        engine.dispose()
    migrate(engine, to="0002")
    _fill_0002(engine)
    store = Store(store_url)
    assert schema_version(engine) == SCHEMA_VERSION
    noon = NOON.replace(tzinfo=UTC)
    run = store.run("r2")
    assert (run.started_at, run.run_attempt) == (noon, 2) and run.started_at.utcoffset() is not None
    tasks = store.tasks("r2")
    assert [(t.task, t.attempts, t.run_attempt, t.started_at) for t in tasks] == [
        ("t_myjob_1", 1, 2, noon), ("t_myjob_3", 2, 2, noon)]
    assert [(a.task, a.attempt, a.run_attempt) for a in store.attempts("r2")] == [
        ("t_myjob_1", 1, 2), ("t_myjob_3", 1, 2), ("t_myjob_3", 2, 2)]
    _, jobs = store.view("jobs_run_stats")
    assert sorted((r[1], r[2], r[4], r[7], r[8]) for r in jobs) == [
        ("t_myjob_1", "DONE", noon, 2, 1), ("t_myjob_3", "DONE", noon, 2, 2)]
    from jobgraph.store.deployments import Deployments

    assert Deployments(store).get("root_task").anchor == noon
    run_into(store, tmp_path, [{"name": "after", "image": "sh", "args": ["true"]}])  # new attempt ids go on
    assert len(store.runs(10)) == 2
    store.close()
    engine.dispose()


def test_0003_downgrades_to_0002_and_back(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    run_id = run_into(store, tmp_path, [{"name": "a", "image": "sh", "args": ["true"]}])
    store.close()
    engine = create_engine(store_url)
    config = Config()
    config.set_main_option("script_location", str(Path(migrate.__code__.co_filename).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    assert schema_version(engine) == "0002" and "job_attempts" not in inspect(engine).get_view_names()
    store = Store(store_url)
    assert [(t.task, t.state) for t in store.tasks(run_id)] == [("a", "SUCCEEDED")]
    assert [(a.task, a.status) for a in store.attempts(run_id)] == [("a", "DONE")]
    store.close()
    engine.dispose()


def first_opens(tmp_path: Path, url: str, count: int) -> list[subprocess.CompletedProcess[str]]:
    """`count` `jobgraph history` processes opening the same store at once."""
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    processes = [subprocess.Popen([sys.executable, "-m", "jobgraph", "history", "--store", url], cwd=tmp_path,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(count)]
    outputs = [p.communicate(timeout=120) for p in processes]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(processes, outputs, strict=True)]


def test_eight_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path, store_url: str) -> None:
    results = first_opens(tmp_path, store_url, 8)
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    assert not any(r.stderr for r in results), [r.stderr for r in results]
    engine = create_engine(store_url)
    assert schema_version(engine) == SCHEMA_VERSION
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()


def test_an_interrupted_upgrade_changes_nothing_and_runs_again(store_url: str) -> None:
    engine = create_engine(store_url)
    migrate(engine, to="0001")
    with engine.begin() as conn:  # something in the way of a late step of 0002
        conn.execute(text("CREATE TABLE leases (name VARCHAR(64))"))
    with pytest.raises(StoreFault, match=rf"cannot upgrade the store .* from version 0001 to {SCHEMA_VERSION}: "
                                         r"\S*(table|relation) \S*leases\S* already exists; nothing was changed"):
        Store(store_url)
    assert schema_version(engine) == "0001"
    assert not {"pipelines", "pipeline_versions", "fires"} & set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE leases"))
    Store(store_url).close()
    assert schema_version(engine) == SCHEMA_VERSION
    engine.dispose()


def _as_python(statements: list[str]) -> str:
    """The statements as the body of SQLITE_SCHEMA, in lines ruff accepts: what to paste after a new migration."""
    out = []
    for statement in statements:
        pieces: list[str] = []
        for line in statement.splitlines(keepends=True):
            while len(line) > 90:
                cut = line.rfind(" ", 0, 90) + 1 or 90
                pieces.append(line[:cut])
                line = line[cut:]
            pieces.append(line)
        out.append("    (\n" + "".join(f"        {piece!r}\n" for piece in pieces) + "    ),\n")
    return "".join(out)


def _schema(path: Path) -> tuple[list[tuple[str, str, str, str | None]], list[tuple[str]]]:
    """A SQLite file's schema (every table, index and view, with its SQL text) and its version stamp."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        master = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid").fetchall()
        return master, conn.execute("SELECT version_num FROM alembic_version").fetchall()


def test_a_new_sqlite_store_is_made_from_a_snapshot_that_is_exactly_what_the_migrations_build(tmp_path: Path) -> None:
    migrated = tmp_path / "migrated.db"
    engine = create_engine(f"sqlite:///{migrated}")
    migrate(engine, to="0001")  # not empty any more: the rest goes through every migration
    migrate(engine)
    engine.dispose()
    Store(f"sqlite:///{tmp_path / 'new.db'}").close()
    built, made = _schema(migrated), _schema(tmp_path / "new.db")
    assert made == built, "store/sqlite_schema.py is out of date; SQLITE_SCHEMA is now:\n" + _as_python(
        [sql for _, _, _, sql in built[0] if sql is not None])
    assert SQLITE_SCHEMA_VERSION == SCHEMA_VERSION and built[1] == [(SCHEMA_VERSION,)]


def test_opening_a_new_sqlite_store_does_not_load_the_migrations(tmp_path: Path) -> None:
    """A first run in a new folder pays for no migration tool (a check of what is imported, not a timing)."""
    script = ("import sys; from jobgraph.store import Store; Store(sys.argv[1]).close(); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic' or m.endswith('.migrations')))")
    url = f"sqlite:///{tmp_path / 'new' / 'store.db'}"
    loaded = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]"
    assert _schema(tmp_path / "new" / "store.db")[1] == [(SCHEMA_VERSION,)]
