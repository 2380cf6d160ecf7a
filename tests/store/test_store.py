"""The store: the seed's views with the seed's columns, bound parameters, a record at every event, lean reads."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, text

from jobgraph.config import Pipeline
from jobgraph.config.validate import check_pipeline
from jobgraph.engine import AttemptEnded, AttemptStarted, Event, RunEnded, TaskChanged
from jobgraph.engine.run import GraphRun, PriorTask
from jobgraph.errors import StoreError
from jobgraph.runners.local import LocalRunner
from jobgraph.states import TaskState
from jobgraph.store import Store
from jobgraph.store.ownership import RunBusy
from jobgraph.store.views import VIEW_NAMES

SEED_JOBS_RUN_STATS = ["root_task_name", "task_name", "job_status", "graph_run_id", "graph_start_time",
                       "errors", "created_date"]
SEED_TASK_LOGGING_STATS = ["graph_run_group_id", "name", "state", "return_value", "query_start_time",
                           "completed_time", "duration_in_secs", "error_message"]


def run_into(store: Store, tmp_path: Path, jobs: list[dict[str, object]], extra: list | None = None) -> str:
    pipeline = check_pipeline(Pipeline.model_validate(
        {"name": "root_task", "images": {"sh": ["sh", "-c"]}, "jobs": jobs}), "test")
    runner = LocalRunner(pipeline.images, cwd=tmp_path)
    listeners = [store, *(extra or [])]
    result = asyncio.run(GraphRun(pipeline, lambda _j: runner, listeners, tmp_path / "logs").run())
    return result.run_id


def test_views_have_the_seeds_columns(tmp_path: Path, store_url: str) -> None:
    store = Store(store_url)
    run_id = run_into(store, tmp_path, [
        {"name": "ok", "image": "sh", "args": ['printf 7 > "$JOBGRAPH_RETURN_VALUE_FILE"']},
        {"name": "bad", "image": "sh", "args": ["echo \"it's 'broken'; drop table runs\" >&2; exit 4"], "retries": 1},
        {"name": "never", "image": "sh", "args": ["true"], "after": ["bad"]},
    ])
    columns, rows = store.view("jobs_run_stats", limit=10)
    assert columns[:7] == SEED_JOBS_RUN_STATS
    assert columns[7:] == ["graph_run_attempt", "attempt", "exit_code", "duration_secs"]
    by_job = {r[1]: r for r in rows}
    assert len(rows) == 2 and set(by_job) == {"ok", "bad"}  # one row per job that ran; "never" was skipped
    bad = by_job["bad"]
    assert bad[0] == "root_task" and bad[2] == "FAILED" and bad[3] == run_id and bad[8] == 2 and bad[9] == 4
    assert "it's 'broken'; drop table runs" in bad[5]
    assert by_job["ok"][2] == "DONE" and by_job["ok"][5] == ""

    columns, rows = store.view("task_logging_stats", limit=10)
    assert columns == [*SEED_TASK_LOGGING_STATS, "graph_run_attempt"]
    by_name = {r[1]: r for r in rows}
    assert by_name["ok"][2] == "SUCCEEDED" and by_name["ok"][3] == "7" and by_name["ok"][0] == run_id
    assert isinstance(by_name["ok"][6], int)
    assert by_name["bad"][2] == "FAILED" and "exit code 4" in by_name["bad"][7]
    assert by_name["never"][2] == "SKIPPED" and by_name["never"][4] is None

    columns, rows = store.view("job_attempts", limit=10)
    assert columns == ["graph_run_id", "task_name", "attempt", "status", "exit_code", "error", "start_time",
                       "end_time", "duration_secs", "graph_run_attempt"]
    assert sorted((r[1], r[2], r[3], r[4]) for r in rows) == [("bad", 1, "FAILED", 4), ("bad", 2, "FAILED", 4),
                                                              ("ok", 1, "DONE", 0)]
    with store.engine.connect() as raw:
        assert raw.execute(text("select count(*) from runs")).scalar() == 1
        for view in VIEW_NAMES:
            assert raw.execute(text(f"select count(*) from {view}")).scalar_one() >= 2
    store.close()


def test_every_event_a_listener_sees_is_already_committed(tmp_path: Path) -> None:
    """The store gets each wake-up's events first: another connection sees each event before any display does."""
    path = tmp_path / "db.sqlite"
    store = Store(f"sqlite:///{path}")
    order = [TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING, TaskState.SUCCEEDED]
    seen: list[str] = []

    def reader(event: Event) -> None:
        with contextlib.closing(sqlite3.connect(path)) as other:
            run = other.execute("select state from runs").fetchone()
            task = other.execute("select state from task_runs").fetchone()
            attempt = other.execute("select status from attempts").fetchone()
        seen.append(type(event).__name__)
        if isinstance(event, TaskChanged):
            assert order.index(TaskState(task[0])) >= order.index(event.state), (event, task)
        if isinstance(event, AttemptStarted):
            assert attempt is not None
        if isinstance(event, AttemptEnded):
            assert attempt == (event.status.value,)
        if isinstance(event, RunEnded):
            assert run == (event.state.value,)

    run_into(store, tmp_path, [{"name": "a", "image": "sh", "args": ["true"]}], extra=[reader])
    assert seen == ["RunStarted", "TaskChanged", "TaskChanged", "AttemptStarted", "AttemptEnded", "TaskChanged",
                    "RunEnded"]
    store.close()


def test_a_run_commits_about_once_per_job_not_once_per_event(tmp_path: Path, store_url: str) -> None:
    """Group commit: each job's five events are written in the transactions of the wake-ups they happen in."""
    store = Store(store_url)
    commits: list[int] = []
    jobs = [{"name": f"c{i}", "image": "sh", "args": ["true"], "after": [f"c{i - 1}"] if i else []} for i in range(20)]
    jobs += [{"name": f"f{i}", "image": "sh", "args": ["true"], "after": ["c0"]} for i in range(20)]

    def count(_conn: object) -> None:
        commits.append(1)

    event.listen(Engine, "commit", count)  # SQLAlchemy's commits; the sqlite3 writer's, on SQLite, by their statement
    if store._sqlite is not None:
        store._sqlite._db.set_trace_callback(lambda statement: count(None) if statement == "COMMIT" else None)
    try:
        run_id = run_into(store, tmp_path, jobs)
    finally:
        event.remove(Engine, "commit", count)
    assert {t.state for t in store.tasks(run_id)} == {"SUCCEEDED"} and len(store.attempts(run_id)) == 40
    assert all(t.duration_secs is not None and t.duration_secs >= 0 for t in store.tasks(run_id))
    assert 20 <= len(commits) <= 40 + 2  # one per job started, and the run's end; per event it was 5 * 40 + 2
    store.close()


def test_runs_are_found_by_a_unique_prefix(tmp_path: Path, store_url: str) -> None:
    store = Store(store_url)
    run_id = run_into(store, tmp_path, [{"name": "a", "image": "sh", "args": ["true"]}])
    assert store.run(run_id[:8]).run_id == run_id
    assert [t.task for t in store.tasks(run_id)] == ["a"]
    assert [a.status for a in store.attempts(run_id)] == ["DONE"]
    with pytest.raises(StoreError, match="no run with id '%'"):
        store.run("%")
    store.close()


def test_a_retry_reopens_the_run_in_the_store(tmp_path: Path, store_url: str) -> None:
    store = Store(store_url)
    run_id = run_into(store, tmp_path, [{"name": "a", "image": "sh", "args": ["exit 1"]}])
    assert store.run(run_id).state == "FAILED"
    pipeline = check_pipeline(Pipeline.model_validate_json(store.run(run_id).snapshot), "snapshot")
    runner = LocalRunner({"sh": ("sh", "-c")}, cwd=tmp_path)
    fixed = pipeline.model_copy(update={"jobs": (pipeline.jobs[0].model_copy(update={"args": ("true",)}),)})
    prior = {t.task: PriorTask(t.state, t.attempts, t.return_value) for t in store.tasks(run_id)}
    unclaimed = GraphRun(fixed, lambda _j: runner, [store], tmp_path / "logs", run_id=run_id, prior=prior,
                         run_attempt=2)
    assert asyncio.run(unclaimed.run()).state == "CANCELLED"  # the store refused to record it: nothing ran
    [(_, refused)] = unclaimed.listener_failures
    assert isinstance(refused, RunBusy) and "was not claimed for attempt 2 by this process" in str(refused)
    assert store.run(run_id).state == "FAILED" and [a.attempt for a in store.attempts(run_id)] == [1]

    claimed = store.claim_run(store.run(run_id))
    assert (claimed.state, claimed.run_attempt, claimed.owner) == ("RUNNING", 2, store.owner)
    asyncio.run(GraphRun(fixed, lambda _j: runner, [store], tmp_path / "logs", run_id=run_id, prior=prior,
                         run_attempt=2).run())
    run = store.run(run_id)
    assert (run.state, run.run_attempt) == ("SUCCEEDED", 2)
    assert [(a.attempt, a.status, a.run_attempt) for a in store.attempts(run_id)] == [
        (1, "FAILED", 1), (2, "DONE", 2)]
    _, logged = store.view("task_logging_stats")
    assert sorted((r[1], r[2], r[8]) for r in logged) == [("a", "FAILED", 1), ("a", "SUCCEEDED", 2)]
    _, jobs = store.view("jobs_run_stats")
    assert sorted((r[1], r[2], r[7], r[8]) for r in jobs) == [("a", "DONE", 2, 2), ("a", "FAILED", 1, 1)]
    store.close()


def test_listing_runs_reads_no_snapshot_and_counts_jobs_in_one_query(tmp_path: Path, store_url: str) -> None:
    """`history` lists runs: whatever their number and size, two statements and no pipeline snapshot."""
    store = Store(store_url)
    run_ids = [run_into(store, tmp_path, [{"name": "a", "image": "sh", "args": ["true"]},
                                          {"name": "b", "image": "sh", "args": ["exit 3"]},
                                          {"name": "c", "image": "sh", "args": ["true"], "after": ["b"]}])
               for _ in range(3)]
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    listed = store.runs(10)
    assert len(statements) == 2 and not any("snapshot" in s for s in statements)
    assert [r.run_id for r in listed] == run_ids[::-1]
    assert all(r.task_counts == {"SUCCEEDED": 1, "FAILED": 1, "SKIPPED": 1} for r in listed)
    store.close()


def test_a_run_is_claimed_by_exactly_one_of_the_processes_that_saw_it(tmp_path: Path, store_url: str) -> None:
    first, second = Store(store_url), Store(store_url)
    second.owner = "other-host:1:1"
    run_id = run_into(first, tmp_path, [{"name": "a", "image": "sh", "args": ["exit 1"]}])
    seen = first.run(run_id)
    assert first.claim_run(seen).run_attempt == 2
    with pytest.raises(RunBusy, match=f"run {run_id} is already being retried by {first.owner} \\(attempt 2\\)"):
        second.claim_run(seen)
    lost = first.run(run_id)
    assert second.take_over(lost) and not first.take_over(lost)
    assert first.run(run_id).owner == "other-host:1:1"
    first.close()
    second.close()


def test_a_run_of_another_host_is_closed_only_by_the_process_that_took_it_over(
        tmp_path: Path, store_url: str) -> None:
    """Recovery and a standby scheduler take a lost run over first, so that only one of them closes it."""
    store = Store(store_url)
    run_id = run_into(store, tmp_path, [{"name": "a", "image": "sh", "args": ["true"]}])
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE runs SET state = 'RUNNING', owner = 'elsewhere:1:1' WHERE run_id = :r"),
                     {"r": run_id})
        conn.execute(text("UPDATE task_runs SET state = 'RUNNING' WHERE run_id = :r"), {"r": run_id})
    assert not store.mark_lost(run_id, "lost")  # its owner may be alive: this process cannot tell
    assert store.run(run_id).state == "RUNNING"
    assert store.take_over(store.run(run_id)) and store.mark_lost(run_id, "lost")
    assert store.run(run_id).state == "CANCELLED"
    assert [(t.task, t.state) for t in store.tasks(run_id)] == [("a", "SUCCEEDED")]  # its attempt ended DONE
    assert not store.mark_lost(run_id, "lost")
    store.close()
