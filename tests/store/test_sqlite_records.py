"""The sqlite3 way of writing a SQLite store: the same rows as SQLAlchemy's, read back alike, and no SQLAlchemy.

`jobgraph run` on SQLite records through store/sqlite_records.py; `history`, `show`, retries and
PostgreSQL go through store/sql_records.py. Each must read what the other wrote, to the character.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobgraph.engine import (
    AttemptAdopted,
    AttemptEnded,
    AttemptStarted,
    AttemptSubmitted,
    Event,
    RunEnded,
    RunStarted,
    TaskChanged,
    TaskInfo,
)
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.faults import StoreFault
from jobgraph.store.sql_records import SqlStore
from jobgraph.store.sqlite_records import SqliteRecords
from jobgraph.store.writer import EventWriter

OWNER = "test-host:1:1"
AT = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2)))  # 10:00:00.25 UTC
TASKS = (TaskInfo("a", "default", "img", ()), TaskInfo("b", "small", "img", ("a",)),
         TaskInfo("c", "default", "img", ("a", "b"), is_finalizer=True))


def at(seconds: float) -> datetime:
    return AT + timedelta(seconds=seconds)


FIRST_ATTEMPT: list[list[Event]] = [
    [RunStarted("r", "p", at(0), datetime(2026, 3, 1, 9, 0), TASKS, '{"name": "p"}', trigger="schedule",
                version="v1"),
     TaskChanged("r", "a", TaskState.QUEUED, at(0))],
    [TaskChanged("r", "a", TaskState.RUNNING, at(1), attempt=1),
     AttemptStarted("r", "a", 1, at(1), Path("logs/a/1.log")),
     AttemptSubmitted("r", "a", 1, "slurm", "4711")],
    [AttemptEnded("r", "a", 1, AttemptStatus.DONE, at(1), at(2.5), 0, None, Path("logs/a/1.log")),
     TaskChanged("r", "a", TaskState.SUCCEEDED, at(2.5), attempt=1, return_value="7"),
     TaskChanged("r", "b", TaskState.RUNNING, at(3), attempt=1),
     AttemptStarted("r", "b", 1, at(3), Path("logs/b/1.log")),
     AttemptEnded("r", "b", 1, AttemptStatus.FAILED, at(3), at(4), 4, "it's 'broken'; drop table runs",
                  Path("logs/b/1.log")),
     TaskChanged("r", "b", TaskState.FAILED, at(4), attempt=1, reason="exit code 4"),
     TaskChanged("r", "c", TaskState.SKIPPED, at(4), reason="upstream failed"),
     RunEnded("r", RunState.FAILED, at(5))],
]
SECOND_ATTEMPT: list[list[Event]] = [
    [RunStarted("r", "p", at(60), datetime(2026, 3, 1, 9, 0), TASKS, '{"name": "p", "v": 2}', run_attempt=2,
                resumed=("a",), version=None)],
    [TaskChanged("r", "b", TaskState.RUNNING, at(61), attempt=2),
     AttemptStarted("r", "b", 2, at(61), Path("logs/b/2.log")),
     AttemptAdopted("r", "b", 2, at(62))],
    [AttemptEnded("r", "b", 2, AttemptStatus.DONE, at(61), at(63), 0, None, Path("logs/b/2.log")),
     TaskChanged("r", "b", TaskState.SUCCEEDED, at(63), attempt=2),
     TaskChanged("r", "c", TaskState.SUCCEEDED, at(64)),
     RunEnded("r", RunState.SUCCEEDED, at(65))],
]


def rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the run's tables, as SQLite holds them."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
                for table in ("runs", "task_runs", "attempts")}


def write(writer: EventWriter | Store, batches: list[list[Event]]) -> None:
    for batch in batches:
        writer.record_all(batch)


def test_both_ways_of_writing_store_the_same_rows_and_read_each_others(tmp_path: Path) -> None:
    """Every event kind, a retry included, through sqlite3 into one file and through SQLAlchemy into another."""
    fast_path, full_path = tmp_path / "sqlite3.db", tmp_path / "sqlalchemy.db"
    fast, full = SqliteRecords(fast_path, OWNER), SqlStore(f"sqlite:///{full_path}", OWNER)
    claimer = SqlStore(f"sqlite:///{fast_path}", OWNER)  # a retry claims its run through SQLAlchemy
    write(fast, FIRST_ATTEMPT[:1])
    write(full, FIRST_ATTEMPT[:1])
    assert fast.running_runs() == full.running_runs() == claimer.running_runs() != []
    write(fast, FIRST_ATTEMPT[1:])
    write(full, FIRST_ATTEMPT[1:])
    claimer.claim_run(claimer.run("r"))
    full.claim_run(full.run("r"))
    write(fast, SECOND_ATTEMPT)
    write(full, SECOND_ATTEMPT)

    written = rows(fast_path)
    assert written == rows(full_path)
    run = written["runs"][0]
    assert run[4:7] == ("2026-03-01 10:00:00.250000", "2026-03-01 09:00:00.000000", "2026-03-01 10:01:05.250000")
    assert [(t[1], t[2], t[3], t[4], t[8], t[11]) for t in written["task_runs"]] == [
        ("a", 1, "SUCCEEDED", 1, 0, 1.5), ("b", 1, "FAILED", 1, 0, 1.0), ("b", 2, "SUCCEEDED", 2, 0, 2.0),
        ("c", 1, "SKIPPED", 0, 1, None), ("c", 2, "SUCCEEDED", 0, 1, None)]
    assert [(a[2], a[3], a[4], a[5], a[13], a[14]) for a in sorted(written["attempts"], key=lambda a: a[0])] == [
        ("a", 1, 1, "DONE", "slurm", "4711"), ("b", 1, 1, "FAILED", None, None), ("b", 2, 2, "DONE", None, None)]
    read_by_sqlalchemy, read_by_sqlite3 = SqlStore(f"sqlite:///{fast_path}", OWNER), SqliteRecords(full_path, OWNER)
    assert read_by_sqlalchemy.tasks("r") == full.tasks("r") == fast.tasks("r") == read_by_sqlite3.tasks("r")
    assert read_by_sqlalchemy.tasks("r")[0].started_at == at(1) and read_by_sqlite3.tasks("r")[2].is_finalizer
    assert read_by_sqlalchemy.run("r") == full.run("r")
    assert read_by_sqlalchemy.running_runs() == read_by_sqlite3.running_runs() == []
    for store in (fast, full, claimer, read_by_sqlalchemy, read_by_sqlite3):
        store.close()


RUN_PATH = """
import asyncio, json, sys
from pathlib import Path
from jobgraph.config import Pipeline, check_pipeline
from jobgraph.engine.run import GraphRun
from jobgraph.recovery import recover_lost_runs
from jobgraph.runners.local import LocalRunner
from jobgraph.store import Store
from jobgraph.store.recorder import RunRecorder

folder = Path(sys.argv[1])
pipeline = check_pipeline(Pipeline.model_validate({"name": "p", "images": {"sh": ["sh", "-c"]}, "jobs": [
    {"name": "a", "image": "sh", "args": ["true"]}, {"name": "b", "image": "sh", "args": ["exit 3"]}]}), "test")
runner = LocalRunner(pipeline.images, cwd=folder)
with Store(f"sqlite:///{folder / 'store' / 'jobgraph.db'}") as store:  # what `jobgraph run` does, in its order
    recover_lost_runs(store, folder)
    recorder = RunRecorder(store, print)
    result = asyncio.run(GraphRun(pipeline, lambda _job: runner, [recorder], folder / "logs").run())
    states = {t.task: t.state.value for t in store.tasks(result.run_id)}
    while_running = "sqlalchemy" in sys.modules
    history = [(r.run_id, dict(r.task_counts)) for r in store.runs()]  # what `history` and `show` read
    print(json.dumps({"run_id": result.run_id, "states": states, "sqlalchemy": while_running,
                      "history": history, "then": "sqlalchemy" in sys.modules}))
"""


@pytest.mark.parametrize("store_exists", [False, True], ids=["new store", "existing store"])
def test_a_run_on_sqlite_never_imports_sqlalchemy_until_a_query_needs_it(tmp_path: Path, store_exists: bool) -> None:
    """What `jobgraph run` does on SQLite (open or create the store, recover, record, summarize) in a fresh python."""
    if store_exists:
        Store(f"sqlite:///{tmp_path / 'store' / 'jobgraph.db'}").close()
    result = subprocess.run([sys.executable, "-c", RUN_PATH, str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["states"] == {"a": "SUCCEEDED", "b": "FAILED"}
    assert outcome["sqlalchemy"] is False
    assert outcome["history"] == [[outcome["run_id"], {"SUCCEEDED": 1, "FAILED": 1}]] and outcome["then"] is True


def test_an_older_sqlite_store_is_migrated_before_a_run_records_into_it(tmp_path: Path) -> None:
    """A store at an earlier version goes through SQLAlchemy's migrations first, then records through sqlite3."""
    from sqlalchemy import create_engine

    from jobgraph.store.sql_records import migrate, schema_version

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    migrate(engine, to="0001")
    engine.dispose()
    with Store(url) as store:
        assert store._sql is not None  # it migrated
        write(store, FIRST_ATTEMPT)
        assert [t.state for t in store.tasks("r")] == ["SUCCEEDED", "FAILED", "SKIPPED"]
    engine = create_engine(url)
    assert schema_version(engine) == "0006"
    engine.dispose()
    with Store(url) as store:
        assert store._sql is None  # current: nothing to migrate, no SQLAlchemy


def test_the_store_s_faults_on_the_sqlite3_path_are_the_same_store_faults(tmp_path: Path) -> None:
    """A lock held too long waits and is transient; a store that cannot be written is not; a refused record passes."""
    path = tmp_path / "store.db"
    store = Store(f"sqlite:///{path}")
    write(store, FIRST_ATTEMPT[:1])
    assert store._sqlite is not None
    store._sqlite._db.execute("PRAGMA busy_timeout=200")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreFault, match=f"the store {path} stayed locked by another process") as locked:
            write(store, FIRST_ATTEMPT[1:])
        assert locked.value.transient
        other.execute("ROLLBACK")
    store._sqlite._db.execute("PRAGMA query_only=ON")
    with pytest.raises(StoreFault, match=f"cannot write the store {path} \\(attempt to write a readonly") as readonly:
        write(store, FIRST_ATTEMPT[1:])
    assert not readonly.value.transient
    store._sqlite._db.execute("PRAGMA query_only=OFF")
    with pytest.raises(sqlite3.IntegrityError, match=r"UNIQUE constraint failed: runs\.run_id"):
        write(store, FIRST_ATTEMPT[:1])
    write(store, FIRST_ATTEMPT[1:])  # nothing of the failed batches was written: the run goes on from where it was
    assert [t.state for t in store.tasks("r")] == ["SUCCEEDED", "FAILED", "SKIPPED"]
    store.close()
