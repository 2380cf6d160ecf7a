"""Schema migrations (Alembic) on both backends: from an empty database, and from the previous version."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from jobgraph.store import Store
from jobgraph.store.faults import StoreFault
from jobgraph.store.store import migrate, schema_version
from jobgraph.store.tables import SCHEMA_VERSION


def test_an_empty_database_gets_the_whole_schema(store_url: str) -> None:
    store = Store(store_url)
    engine = create_engine(store_url)
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "task_runs", "attempts", "pipelines", "pipeline_versions", "fires", "leases"} <= tables
    assert {"jobs_run_stats", "task_logging_stats"} <= set(inspect(engine).get_view_names())
    assert schema_version(engine) == SCHEMA_VERSION
    store.close()
    engine.dispose()


def test_a_store_of_the_previous_version_is_migrated_with_its_history(store_url: str) -> None:
    engine = create_engine(store_url)
    migrate(engine, to="0001")
    assert schema_version(engine) == "0001" and not inspect(engine).has_table("pipelines")
    now = datetime(2026, 11, 1, 12, 0)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO runs (run_id, pipeline, state, run_attempt, started_at, scheduled_time, "
                          "finished_at, snapshot) VALUES ('r1', 'root_task', 'FAILED', 1, :t, :t, :t, '{}')"),
                     {"t": now})
        conn.execute(text("INSERT INTO task_runs (run_id, task, state, attempts, pool, image, predecessors, "
                          "is_finalizer, started_at, finished_at, duration_secs, error_message) VALUES "
                          "('r1', 't_myjob_3', 'FAILED', 1, 'p', 'i', '[]', :f, :t, :t, 2.0, 'boom')"),
                     {"t": now, "f": False})
    store = Store(store_url)
    assert schema_version(engine) == SCHEMA_VERSION
    assert store.run("r1").state == "FAILED" and [t.task for t in store.tasks("r1")] == ["t_myjob_3"]
    _, rows = store.view("task_logging_stats")
    assert rows == [("r1", "t_myjob_3", "FAILED", None, "2026-11-01 12:00:00", "2026-11-01 12:00:00", 2, "boom")]
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
    with engine.begin() as conn:  # something in the way of the last step of 0002
        conn.execute(text("CREATE TABLE leases (name VARCHAR(64))"))
    with pytest.raises(StoreFault, match=r"cannot upgrade the store .* from version 0001 to 0002: .*leases.*"
                                         r"nothing was changed"):
        Store(store_url)
    assert schema_version(engine) == "0001"
    assert not {"pipelines", "pipeline_versions", "fires"} & set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE leases"))
    Store(store_url).close()
    assert schema_version(engine) == SCHEMA_VERSION
    engine.dispose()
