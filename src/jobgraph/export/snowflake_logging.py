"""The seed's two logging tables and the finalizer's statements that fill them, from Snowflake's own task history.

The seed logs per job from inside its stored procedure (`jobs_run_stats`, with f-string SQL that a quote in
an error message breaks) and per task from its finalizer (`task_logging_stats`, through a UDTF that reads
every graph run since a start time, at most 100 rows). Here both are filled by the finalizer alone, from
`INFORMATION_SCHEMA.TASK_HISTORY` of this graph run only (its run group id, up to 10,000 rows), with no
user text in the SQL: a job's error message is data the INSERT copies, never text it is built from.

`logging_inserts` takes where the history rows come from and how the run group id and graph start are
written, so the same statements run in the finalizer (on Snowflake Scripting variables) and, in the tests,
on fakesnow against a table standing in for the history.
"""

from __future__ import annotations

from jobgraph.runners.snowflake_sql import quote_identifier, string_literal

JOBS_RUN_STATS = "jobs_run_stats"
"""The seed's per-job table (one row per job task and graph run)."""

TASK_LOGGING_STATS = "task_logging_stats"
"""The seed's per-task table, filled by its finalizer GET_GRAPH_STATS."""

FINALIZE_TASK = "GET_GRAPH_STATS"
"""The seed's finalizer task."""

HISTORY_ROWS = 10_000
"""TASK_HISTORY's largest RESULT_LIMIT (its default, 100, would drop tasks of a large graph)."""

RUN_GROUP_VAR, ROOT_ID_VAR, GRAPH_START_VAR = "run_group_id", "root_task_id", "graph_start"
"""The finalizer's Snowflake Scripting variables."""


def table_statements() -> list[str]:
    """CREATE TABLE IF NOT EXISTS for both tables, with the seed's columns: a re-run keeps their history."""
    return [
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(JOBS_RUN_STATS)} (root_task_name STRING, task_name STRING, "
        "job_status STRING, graph_run_id STRING, graph_start_time TIMESTAMP_LTZ, errors STRING, "
        "created_date DATETIME DEFAULT CURRENT_TIMESTAMP())",
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(TASK_LOGGING_STATS)} (graph_run_group_id VARCHAR, "
        "name VARCHAR, state VARCHAR, return_value VARCHAR, query_start_time VARCHAR, completed_time VARCHAR, "
        "duration_in_secs INT, error_message VARCHAR)",
    ]


def history_source() -> str:
    """This graph's task history since the run was scheduled, as the finalizer reads it (on its Snowflake
    Scripting variables); up to now only, so no future scheduled run is read (the seed's range)."""
    return (f"TABLE(INFORMATION_SCHEMA.TASK_HISTORY(SCHEDULED_TIME_RANGE_START => :{GRAPH_START_VAR}, "
            f"SCHEDULED_TIME_RANGE_END => CURRENT_TIMESTAMP(), RESULT_LIMIT => {HISTORY_ROWS}, "
            f"ROOT_TASK_ID => :{ROOT_ID_VAR}))")


def logging_inserts(root_task: str, source: str, run_group: str, graph_start: str) -> list[str]:
    """The two INSERT ... SELECT statements: every task of the run but the finalizer into task_logging_stats,
    every job task (not the root, not the finalizer) into jobs_run_stats, SUCCEEDED written as the seed's DONE.

    `source` is a FROM item with TASK_HISTORY's columns, `run_group` and `graph_start` SQL expressions; the
    names are validated identifiers, written as string literals.
    """
    root, finalize = string_literal(root_task.upper()), string_literal(FINALIZE_TASK)
    this_run = f"graph_run_group_id = {run_group}"
    return [
        f"INSERT INTO {quote_identifier(TASK_LOGGING_STATS)} (graph_run_group_id, name, state, return_value, "
        "query_start_time, completed_time, duration_in_secs, error_message) "
        "SELECT graph_run_group_id, name, state, return_value, "
        "TO_VARCHAR(query_start_time, 'YYYY-MM-DD HH24:MI:SS'), TO_VARCHAR(completed_time, 'YYYY-MM-DD HH24:MI:SS'), "
        "DATEDIFF('second', query_start_time, completed_time), error_message "
        f"FROM {source} WHERE {this_run} AND name <> {finalize}",
        f"INSERT INTO {quote_identifier(JOBS_RUN_STATS)} (root_task_name, task_name, job_status, graph_run_id, "
        "graph_start_time, errors, created_date) "
        f"SELECT {root}, name, CASE state WHEN 'SUCCEEDED' THEN 'DONE' ELSE state END, graph_run_group_id, "
        f"{graph_start}, error_message, CURRENT_TIMESTAMP() "
        f"FROM {source} WHERE {this_run} AND name NOT IN ({root}, {finalize})",
    ]


def finalizer_block(root_task: str, job_statement: str | None = None) -> str:
    """The finalizer's Snowflake Scripting block: read this run's ids, log every task, then run the pipeline's
    own finalizer job if it has one (`job_statement`, its EXECUTE JOB SERVICE: it fails the finalizer task,
    after the logging, if the job fails)."""
    runtime = "SYSTEM$TASK_RUNTIME_INFO"
    lines = [
        "DECLARE",
        f"  {ROOT_ID_VAR} VARCHAR;",
        f"  {RUN_GROUP_VAR} VARCHAR;",
        f"  {GRAPH_START_VAR} TIMESTAMP_LTZ;",
        "BEGIN",
        f"  SELECT {runtime}('CURRENT_ROOT_TASK_UUID'), {runtime}('CURRENT_TASK_GRAPH_RUN_GROUP_ID'),",
        f"         {runtime}('CURRENT_TASK_GRAPH_ORIGINAL_SCHEDULED_TIMESTAMP')::TIMESTAMP_LTZ",
        f"    INTO :{ROOT_ID_VAR}, :{RUN_GROUP_VAR}, :{GRAPH_START_VAR};",
    ]
    for insert in logging_inserts(root_task, history_source(), f":{RUN_GROUP_VAR}", f":{GRAPH_START_VAR}"):
        lines.append(f"  {insert};")
    if job_statement is not None:
        lines.append(f"  {job_statement};")
    lines += ["  RETURN 'logged';", "END;"]
    return "\n".join(lines)
