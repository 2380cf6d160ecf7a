"""The logging tables' DDL and the finalizer's INSERTs, run on fakesnow (Snowflake's SQL on DuckDB).

fakesnow runs tables and queries, not tasks, INFORMATION_SCHEMA.TASK_HISTORY or SYSTEM$ functions: the
finalizer's INSERTs run here against a table with TASK_HISTORY's columns standing in for the history, with
the run group id and graph start as literals where the finalizer has its Snowflake Scripting variables.
What this cannot show: that Snowflake's TASK_HISTORY returns these rows (checked only against its documented
columns), and TO_VARCHAR's format (DuckDB ignores it: the times come back with a zone suffix here).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fakesnow
import pytest
import snowflake.connector

from jobgraph.export.snowflake_logging import logging_inserts, table_statements
from jobgraph.runners.snowflake_sql import string_literal

HISTORY = """CREATE TABLE task_history_rows (graph_run_group_id VARCHAR, name VARCHAR, state VARCHAR,
    return_value VARCHAR, query_start_time TIMESTAMP_LTZ, completed_time TIMESTAMP_LTZ, error_message VARCHAR)"""

ERROR = "Job service failed: it's a \\ 'quoted' error; DROP TABLE jobs_run_stats; --"


@pytest.fixture
def cursor() -> Iterator[Any]:
    with fakesnow.patch():
        connection = snowflake.connector.connect(database="PR_CONTAINER_ORCHESTRATION", schema="PUBLIC")
        cur = connection.cursor()
        cur.execute("CREATE DATABASE IF NOT EXISTS PR_CONTAINER_ORCHESTRATION")
        cur.execute("CREATE SCHEMA IF NOT EXISTS PR_CONTAINER_ORCHESTRATION.PUBLIC")
        cur.execute("USE SCHEMA PR_CONTAINER_ORCHESTRATION.PUBLIC")
        yield cur
        connection.close()


def history(cur: Any, rows: list[tuple[Any, ...]]) -> None:
    cur.execute(HISTORY)
    cur.executemany("INSERT INTO task_history_rows VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)


def at(second: int) -> datetime:
    return datetime(2026, 1, 1, 10, 0, second, tzinfo=UTC)


def test_the_tables_are_the_seeds_and_creating_them_again_keeps_their_rows(cursor: Any) -> None:
    for statement in table_statements():
        cursor.execute(statement)
    cursor.execute("INSERT INTO jobs_run_stats (root_task_name, task_name, job_status) VALUES ('ROOT_TASK', "
                   "'T_MYJOB_1', 'DONE')")
    for statement in table_statements():  # the script run again
        cursor.execute(statement)
    cursor.execute("SELECT TOP 10 * FROM jobs_run_stats ORDER BY created_date DESC")  # the seed's own query
    assert [column[0] for column in cursor.description] == [
        "ROOT_TASK_NAME", "TASK_NAME", "JOB_STATUS", "GRAPH_RUN_ID", "GRAPH_START_TIME", "ERRORS", "CREATED_DATE"]
    (row,) = cursor.fetchall()
    assert row[:3] == ("ROOT_TASK", "T_MYJOB_1", "DONE") and isinstance(row[6], datetime)
    cursor.execute("SELECT TOP 10 * FROM task_logging_stats ORDER BY CAST(QUERY_START_TIME AS DATETIME) DESC")
    assert [column[0] for column in cursor.description] == [
        "GRAPH_RUN_GROUP_ID", "NAME", "STATE", "RETURN_VALUE", "QUERY_START_TIME", "COMPLETED_TIME",
        "DURATION_IN_SECS", "ERROR_MESSAGE"]


def test_the_finalizer_logs_this_runs_tasks_only_with_their_errors_as_data(cursor: Any) -> None:
    for statement in table_statements():
        cursor.execute(statement)
    history(cursor, [
        ("run-1", "ROOT_TASK", "SUCCEEDED", None, at(0), at(1), None),
        ("run-1", "T_MYJOB_2", "SUCCEEDED", "ok", at(2), at(20), None),
        ("run-1", "T_MYJOB_3", "FAILED", None, at(21), at(56), ERROR),
        ("run-1", "GET_GRAPH_STATS", "EXECUTING", None, at(57), None, None),
        ("run-0", "T_MYJOB_1", "SUCCEEDED", None, at(0), at(3), None),  # an earlier (or overlapping) run
    ])
    start = f"{string_literal('2026-01-01 10:00:00')}::TIMESTAMP_LTZ"
    for statement in logging_inserts("root_task", "task_history_rows", string_literal("run-1"), start):
        cursor.execute(statement)
    cursor.execute("SELECT graph_run_group_id, name, state, return_value, query_start_time, completed_time, "
                   "duration_in_secs, error_message FROM task_logging_stats ORDER BY name")
    rows = cursor.fetchall()
    assert [row[1] for row in rows] == ["ROOT_TASK", "T_MYJOB_2", "T_MYJOB_3"]  # not the finalizer, not run-0
    failed = rows[2]
    assert failed[0] == "run-1" and failed[2] == "FAILED" and failed[6] == 35 and failed[7] == ERROR
    assert failed[4].startswith("2026-01-01 10:00:21") and failed[5].startswith("2026-01-01 10:00:56")
    assert rows[1][3] == "ok" and rows[1][6] == 18
    cursor.execute("SELECT root_task_name, task_name, job_status, graph_run_id, graph_start_time, errors "
                   "FROM jobs_run_stats ORDER BY task_name")
    jobs = cursor.fetchall()
    assert [row[:4] for row in jobs] == [("ROOT_TASK", "T_MYJOB_2", "DONE", "run-1"),
                                         ("ROOT_TASK", "T_MYJOB_3", "FAILED", "run-1")]
    assert jobs[1][5] == ERROR and jobs[0][4] == at(0)
    cursor.execute("SELECT COUNT(*) FROM jobs_run_stats WHERE graph_run_id = %s", ("run-0",))
    assert cursor.fetchone() == (0,)
