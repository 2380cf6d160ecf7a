"""The seed's tables as the seed means them, on both backends, through the real `jobgraph` command.

The quickstart's story: the seed pipeline runs, t_myjob_3 breaks and is retried twice by the stored
procedure's loop, then `jobgraph retry` (EXECUTE TASK ... RETRY LAST) reruns it. Its own queries are
then run as written, through the backend's own driver, not through jobgraph.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml
from sqlalchemy import make_url

from jobgraph.config import Pipeline
from jobgraph.config.validate import check_pipeline
from jobgraph.engine import Event
from jobgraph.engine.events import AttemptEnded
from jobgraph.engine.run import GraphRun
from jobgraph.runners.local import LocalRunner
from jobgraph.store import Store
from tests.conftest import SEED, Cli

SEED_IMAGE = "/tutorial_db/data_schema/tutorial_repository/my_job_image:latest"
LATEST_JOBS = "select * from jobs_run_stats order by created_date desc limit 10"
LATEST_TASKS = "SELECT * FROM task_logging_stats ORDER BY CAST(QUERY_START_TIME AS DATETIME) DESC LIMIT 10"


def quickstart(url: str, sql: str) -> list[dict[str, Any]]:
    """One of the quickstart's queries as written (`top 10` as `limit 10`), through sqlite3 or psycopg."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(str(parsed.database))) as db:
            cursor = db.execute(sql)
            names = [d[0].lower() for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    with psycopg.connect(parsed.set(drivername="postgresql").render_as_string(hide_password=False)) as db:
        cursor = db.execute(sql)
        names = [d.name.lower() for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def moment(value: object) -> datetime:
    """A time as either driver returns it: a datetime, SQLAlchemy's SQLite text, or the seed's varchar."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None) if value.utcoffset() is None else value
    text = str(value)
    for form in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y%m%d%H%M%S"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, form)
    raise AssertionError(f"not a time: {value!r}")


def seed_with_finalizer(tmp_path: Path) -> None:
    shutil.copy(SEED / "jobconfig.json", tmp_path / "jobconfig.json")
    pipeline = yaml.safe_load((SEED / "pipeline.yaml").read_text())
    pipeline["finalizer"] = {"image": SEED_IMAGE, "args": ["--query=select 1 as one", "--result_table=finalized"]}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))


def sql_job(tmp_path: Path, query: str) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "results.db")) as db, db:
        db.execute(query)


def test_the_seed_story_fills_the_three_views_as_the_seed_means_them(
        tmp_path: Path, cli: Cli, any_store_url: str) -> None:
    seed_with_finalizer(tmp_path)
    store_option = ("--store", any_store_url)
    cli("run", "pipeline.yaml", *store_option, check=0)
    sql_job(tmp_path, """ALTER TABLE results_3 DROP COLUMN "'hello'" """)
    sql_job(tmp_path, "ALTER TABLE results_3 ADD COLUMN createdate DATETIME")
    cli("run", "pipeline.yaml", *store_option, check=1)
    store = Store(any_store_url)
    second, first = store.runs(2)
    logged_before = {r[1]: r for r in store.view("task_logging_stats", 100)[1] if r[0] == second.run_id}
    sql_job(tmp_path, """ALTER TABLE results_3 ADD COLUMN "'hello'" """)
    sql_job(tmp_path, "ALTER TABLE results_3 DROP COLUMN createdate")
    cli("retry", second.run_id, *store_option, check=0)

    # jobs_run_stats: one row per job and graph run attempt that ran it, with the last attempt's status
    columns, rows = store.view("jobs_run_stats", 100)
    jobs = [dict(zip(columns, row, strict=True)) for row in rows]
    keys = Counter((j["graph_run_id"], j["graph_run_attempt"], j["task_name"]) for j in jobs)
    assert max(keys.values()) == 1
    every_job = {f"t_myjob_{i}" for i in range(1, 7)} | {"finalizer"}
    assert {k[2] for k in keys if k[0] == first.run_id} == every_job
    assert all(j["job_status"] == "DONE" and j["errors"] == "" for j in jobs if j["graph_run_id"] == first.run_id)
    failed = {j["task_name"]: j for j in jobs if (j["graph_run_id"], j["graph_run_attempt"]) == (second.run_id, 1)}
    assert set(failed) == every_job - {"t_myjob_6"}  # skipped: the stored procedure never ran for it
    assert (failed["t_myjob_3"]["job_status"], failed["t_myjob_3"]["attempt"]) == ("FAILED", 3)
    assert "table results_3 has no column named 'hello'" in failed["t_myjob_3"]["errors"]
    retried = {j["task_name"]: j for j in jobs if (j["graph_run_id"], j["graph_run_attempt"]) == (second.run_id, 2)}
    assert set(retried) == {"t_myjob_3", "t_myjob_6", "finalizer"}
    assert (retried["t_myjob_3"]["job_status"], retried["t_myjob_3"]["attempt"]) == ("DONE", 4)
    assert retried["t_myjob_3"]["errors"] == "" and retried["t_myjob_3"]["exit_code"] == 0
    scheduled = {run.run_id: run.scheduled_time for run in store.runs(2)}
    assert all(j["graph_start_time"] == scheduled[j["graph_run_id"]] for j in jobs)

    # job_attempts: every execution, with the graph run attempt it belonged to
    columns, rows = store.view("job_attempts", 100)
    tries = [dict(zip(columns, row, strict=True)) for row in rows]
    assert len([t for t in tries if t["graph_run_id"] == second.run_id]) == 11
    third = sorted((t["attempt"], t["status"], t["exit_code"], t["graph_run_attempt"]) for t in tries
                   if t["graph_run_id"] == second.run_id and t["task_name"] == "t_myjob_3")
    assert third == [(1, "FAILED", 1, 1), (2, "FAILED", 1, 1), (3, "FAILED", 1, 1), (4, "DONE", 0, 2)]
    assert all(t["end_time"] >= t["start_time"] and t["duration_secs"] is not None for t in tries)
    ends = {(t["graph_run_id"], t["task_name"], t["attempt"]): t["end_time"] for t in tries}
    assert failed["t_myjob_3"]["created_date"] >= ends[(second.run_id, "t_myjob_3", 3)]  # the job's end
    assert failed["t_myjob_3"]["created_date"] < retried["t_myjob_3"]["created_date"]

    # task_logging_stats: the finalizer's rows per graph run attempt, appended, never rewritten
    columns, rows = store.view("task_logging_stats", 100)
    logged = [dict(zip(columns, row, strict=True)) for row in rows]
    assert all(r["name"] != "finalizer" for r in logged)
    assert sorted(r["name"] for r in logged if r["graph_run_group_id"] == first.run_id) == sorted(every_job - {
        "finalizer"})
    kept = {r[1]: r for r in rows if r[0] == second.run_id and r[8] == 1}
    assert kept == logged_before and kept["t_myjob_6"][2] == "SKIPPED" and kept["t_myjob_3"][2] == "FAILED"
    assert {(r["name"], r["state"]) for r in logged if (r["graph_run_group_id"], r["graph_run_attempt"]) == (
        second.run_id, 2)} == {("t_myjob_3", "SUCCEEDED"), ("t_myjob_6", "SUCCEEDED")}

    # the quickstart's own queries, as written, give the newest first on this backend
    latest = quickstart(any_store_url, LATEST_JOBS)
    created = [moment(r["created_date"]) for r in latest]
    assert created == sorted(created, reverse=True) and len(latest) == 10
    assert [r["task_name"] for r in latest[:3]] == ["finalizer", "t_myjob_6", "t_myjob_3"]
    started = [r for r in quickstart(any_store_url, LATEST_TASKS) if r["query_start_time"] is not None]
    times = [moment(r["query_start_time"]) for r in started]
    # whole seconds: one run's jobs may all start within one or two, but the retry starts seconds after the first run
    assert times == sorted(times, reverse=True) and len(set(times)) >= 2
    assert (started[0]["graph_run_group_id"], started[0]["graph_run_attempt"]) == (second.run_id, 2)

    # `jobgraph stats` shows the three views, and says its times are UTC
    for view in ("jobs_run_stats", "task_logging_stats", "job_attempts"):
        shown = cli("stats", view, "--limit", "50", *store_option, check=0).stdout
        assert "(UTC)" in shown and second.run_id in shown
    assert cli("stats", "job_attempts", "--limit", "50", *store_option, check=0).stdout.count(" FAILED ") == 3
    store.close()


def test_a_cancelled_run_shows_who_ran_and_who_never_started(tmp_path: Path, any_store_url: str) -> None:
    """A job cancelled while it ran, or while it waited to retry, has its row CANCELLED; one never started has none."""
    pipeline = check_pipeline(Pipeline.model_validate({"name": "root_task", "images": {"sh": ["sh", "-c"]}, "jobs": [
        {"name": "slow", "image": "sh", "args": ["sleep 30"]},
        {"name": "flaky", "image": "sh", "args": ["exit 5"], "retries": 1, "retry_delay": "30s"},
        {"name": "later", "image": "sh", "args": ["true"], "after": ["slow"]},
    ]}), "test")
    store = Store(any_store_url)
    runner = LocalRunner(pipeline.images, cwd=tmp_path)

    def cancel_when_flaky_failed(event: Event) -> None:
        if isinstance(event, AttemptEnded) and event.task == "flaky":
            asyncio.get_running_loop().call_later(0.2, graph_run.cancel)

    graph_run = GraphRun(pipeline, lambda _job: runner, [store, cancel_when_flaky_failed], tmp_path / "logs")
    asyncio.run(graph_run.run())
    columns, rows = store.view("jobs_run_stats", 10)
    jobs = {r[1]: dict(zip(columns, r, strict=True)) for r in rows}
    assert set(jobs) == {"slow", "flaky"}
    assert jobs["slow"]["job_status"] == "CANCELLED" and jobs["flaky"]["job_status"] == "CANCELLED"
    assert jobs["flaky"]["exit_code"] == 5 and jobs["flaky"]["attempt"] == 1
    _, rows = store.view("task_logging_stats", 10)
    assert {r[1]: r[2] for r in rows} == {"slow": "CANCELLED", "flaky": "CANCELLED", "later": "CANCELLED"}
    store.close()
