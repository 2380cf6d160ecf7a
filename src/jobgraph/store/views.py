"""The seed's tables as views over the store, with the seed's names and columns first.

- `jobs_run_stats`: what the seed's ExecuteJobService inserts after its retry loop: one row per job
  and graph run attempt in which the job ran, with the last attempt's status and error, written when
  the job ended (`created_date`); `graph_start_time` is the graph's scheduled time.
- `task_logging_stats`: what the seed's finalizer inserts at the end of each graph run attempt: one
  row per job of that attempt, the finalizer left out. A retry adds rows; it never rewrites them.
- `job_attempts`: every execution of every job.

Each migration that changes a view keeps the definitions it created (`views_0001` stays as 0001
made them), so an old migration never builds a newer view over tables that do not have its columns.
"""

from __future__ import annotations

from sqlalchemy import Integer, and_, case, cast, exists, func, literal, select
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select

from jobgraph.states import TERMINAL_TASK_STATES, AttemptStatus, TaskState
from jobgraph.store.records import VIEW_NAMES as VIEW_NAMES
from jobgraph.store.records import VIEW_ORDER as VIEW_ORDER
from jobgraph.store.tables import attempts, runs, task_runs

SQLITE_TIME_TEXT = "%Y%m%d%H%M%S"
"""SQLite's text for the seed's varchar times: `CAST(x AS DATETIME)` reads it as one number, in order."""

POSTGRES_TIME_TEXT = "YYYY-MM-DD HH24:MI:SS"
"""PostgreSQL keeps the seed's own format; the `datetime` domain (0003) makes the seed's cast work."""


def time_text(column: ColumnElement[object], dialect: Dialect) -> ColumnElement[str]:
    """A stored UTC time as the seed's varchar columns hold it, ordered the same as text and when cast."""
    if dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), POSTGRES_TIME_TEXT)
    return func.strftime(SQLITE_TIME_TEXT, column)


def _terminal() -> list[str]:
    return sorted(state.value for state in TERMINAL_TASK_STATES)


def views_0003(dialect: Dialect) -> dict[str, Select[tuple[object, ...]]]:
    """The three views as migration 0003 creates them: the seed's columns first, then jobgraph's."""
    last = attempts.alias("last_attempt")
    later = attempts.alias("later_attempt")
    ran = and_(last.c.run_id == task_runs.c.run_id, last.c.task == task_runs.c.task,
               last.c.run_attempt == task_runs.c.run_attempt,
               ~exists().where(and_(later.c.run_id == last.c.run_id, later.c.task == last.c.task,
                                    later.c.run_attempt == last.c.run_attempt, later.c.attempt > last.c.attempt)))
    jobs_run_stats = (
        select(
            runs.c.pipeline.label("root_task_name"),
            task_runs.c.task.label("task_name"),
            case((task_runs.c.state == TaskState.CANCELLED.value, literal(AttemptStatus.CANCELLED.value)),
                 else_=last.c.status).label("job_status"),
            task_runs.c.run_id.label("graph_run_id"),
            runs.c.scheduled_time.label("graph_start_time"),
            func.coalesce(last.c.error, "").label("errors"),
            task_runs.c.finished_at.label("created_date"),
            task_runs.c.run_attempt.label("graph_run_attempt"),
            last.c.attempt.label("attempt"),
            last.c.exit_code,
            task_runs.c.duration_secs,
        )
        .select_from(task_runs.join(runs, task_runs.c.run_id == runs.c.run_id).join(last, ran))
        .where(task_runs.c.state.in_(_terminal()), last.c.status != AttemptStatus.RUNNING.value)
    )
    task_logging_stats = select(
        task_runs.c.run_id.label("graph_run_group_id"),
        task_runs.c.task.label("name"),
        task_runs.c.state,
        task_runs.c.return_value,
        time_text(task_runs.c.started_at, dialect).label("query_start_time"),
        time_text(task_runs.c.finished_at, dialect).label("completed_time"),
        cast(func.round(task_runs.c.duration_secs), Integer).label("duration_in_secs"),
        task_runs.c.error_message,
        task_runs.c.run_attempt.label("graph_run_attempt"),
    ).where(task_runs.c.state.in_(_terminal()), task_runs.c.is_finalizer.is_(False))
    job_attempts = select(
        attempts.c.run_id.label("graph_run_id"),
        attempts.c.task.label("task_name"),
        attempts.c.attempt,
        attempts.c.status,
        attempts.c.exit_code,
        attempts.c.error,
        attempts.c.started_at.label("start_time"),
        attempts.c.finished_at.label("end_time"),
        attempts.c.duration_secs,
        attempts.c.run_attempt.label("graph_run_attempt"),
    )
    return {"jobs_run_stats": jobs_run_stats, "task_logging_stats": task_logging_stats,
            "job_attempts": job_attempts}


def views_0001(dialect: Dialect) -> dict[str, Select[tuple[object, ...]]]:
    """The two views as migration 0001 created them (one jobs_run_stats row per attempt), kept for it."""
    jobs_run_stats = (
        select(
            runs.c.pipeline.label("root_task_name"),
            attempts.c.task.label("task_name"),
            attempts.c.status.label("job_status"),
            attempts.c.run_id.label("graph_run_id"),
            runs.c.started_at.label("graph_start_time"),
            attempts.c.error.label("errors"),
            attempts.c.created_date,
            attempts.c.attempt,
            attempts.c.exit_code,
            attempts.c.duration_secs,
        )
        .select_from(attempts.join(runs, attempts.c.run_id == runs.c.run_id))
        .where(attempts.c.status != AttemptStatus.RUNNING.value)
    )

    def text_of(column: ColumnElement[object]) -> ColumnElement[str]:
        if dialect.name == "postgresql":
            return func.to_char(column, POSTGRES_TIME_TEXT)
        return func.strftime("%Y-%m-%d %H:%M:%S", column)

    task_logging_stats = select(
        task_runs.c.run_id.label("graph_run_group_id"),
        task_runs.c.task.label("name"),
        task_runs.c.state,
        task_runs.c.return_value,
        text_of(task_runs.c.started_at).label("query_start_time"),
        text_of(task_runs.c.finished_at).label("completed_time"),
        cast(func.round(task_runs.c.duration_secs), Integer).label("duration_in_secs"),
        task_runs.c.error_message,
    ).where(task_runs.c.state.in_(_terminal()))
    return {"jobs_run_stats": jobs_run_stats, "task_logging_stats": task_logging_stats}


current_views = views_0003
"""The views as the newest migration makes them: what the store reads."""
