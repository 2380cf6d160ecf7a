"""The API's fast reads (app/queries.py) say what the store's own readers say, on both backends.

The run detail reads times raw (SQLite's stored text, PostgreSQL's formatted by the server) and
rewrites them without parsing; the runs list counts the jobs of never-retried runs without looking
for a later row of each. Both must give exactly what `Store.tasks` and `Store.attempts` give, for a
retried run (a job's current row is then of a later graph run attempt) and for times on a whole second.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobgraph.app import queries
from jobgraph.engine import AttemptEnded, AttemptStarted, RunEnded, RunStarted, TaskChanged, TaskInfo
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from tests.conftest import Cli, WritePipeline, sh


def record_whole_second_run(url: str, log_dir: Path) -> str:
    """A run of two jobs whose every time falls on a whole second (SQLite stores `.000000`, ISO drops it)."""
    run_id, at = str(uuid.uuid4()), datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    later = at + timedelta(seconds=7)
    events = [RunStarted(run_id, "whole", at, at, (TaskInfo("one", "", "sh", ()), TaskInfo("two", "", "sh", ("one",))),
                         "{}"),
              TaskChanged(run_id, "one", TaskState.RUNNING, at, attempt=1),
              AttemptStarted(run_id, "one", 1, at, log_dir / "one.log"),
              AttemptEnded(run_id, "one", 1, AttemptStatus.DONE, at, later, 0, None, log_dir / "one.log"),
              TaskChanged(run_id, "one", TaskState.SUCCEEDED, later, attempt=1),
              TaskChanged(run_id, "two", TaskState.RUNNING, later, attempt=1),
              AttemptStarted(run_id, "two", 1, later + timedelta(microseconds=5), log_dir / "two.log"),
              AttemptEnded(run_id, "two", 1, AttemptStatus.FAILED, later, later + timedelta(seconds=1), 3,
                           "exit code 3", log_dir / "two.log"),
              TaskChanged(run_id, "two", TaskState.FAILED, later + timedelta(seconds=1), attempt=1, reason="it failed"),
              RunEnded(run_id, RunState.FAILED, later + timedelta(seconds=2))]
    with Store(url) as store:
        store.record_all(events)
    return run_id


def test_run_detail_and_job_counts_match_the_stores_own_records(any_store_url: str, cli: Cli,
                                                                 write_pipeline: WritePipeline,
                                                                 tmp_path: Path) -> None:
    file = write_pipeline({"jobs": [sh("first", "echo first"), sh("broken", "exit 1", after=["first"]),
                                    sh("later", "echo later", after=["broken"])]})
    cli("run", str(file), "--store", any_store_url, check=1)
    with Store(any_store_url) as store:
        retried = store.runs(1)[0].run_id
    cli("retry", retried, "--store", any_store_url, check=1)
    whole = record_whole_second_run(any_store_url, tmp_path)

    with Store(any_store_url) as store:
        assert store.run(retried).run_attempt == 2
        page, _ = queries.run_page(store)
        assert {run["run_id"] for run in page} == {retried, whole}
        for run in page:
            jobs = store.tasks(run["run_id"])
            assert run["job_counts"] == dict(Counter(job.state.value for job in jobs))
            detail = queries.run_detail(store, run["run_id"])
            assert [(job["name"], job["state"], job["attempts"], job["started_at"], job["finished_at"],
                     job["duration_secs"], job["error"]) for job in detail["jobs"]] == [
                (job.task, job.state.value, job.attempts, queries.iso(job.started_at), queries.iso(job.finished_at),
                 job.duration_secs, job.error_message) for job in jobs]
            assert [(tried["job"], tried["attempt"], tried["run_attempt"], tried["status"], tried["exit_code"],
                     tried["started_at"], tried["finished_at"]) for tried in detail["attempts"]] == [
                (tried.task, tried.attempt, tried.run_attempt, tried.status.value, tried.exit_code,
                 queries.iso(tried.started_at), queries.iso(tried.finished_at))
                for tried in store.attempts(run["run_id"])]
        retried_counts = next(run["job_counts"] for run in page if run["run_id"] == retried)
        assert retried_counts == {"SUCCEEDED": 1, "FAILED": 1, "SKIPPED": 1}
        whole_detail = queries.run_detail(store, whole)
        assert [job["started_at"] for job in whole_detail["jobs"]] == ["2030-01-02T03:04:05Z", "2030-01-02T03:04:12Z"]
        assert whole_detail["attempts"][1]["started_at"] == "2030-01-02T03:04:12.000005Z"
