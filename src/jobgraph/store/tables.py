"""The store's tables and the two views that carry the seed's names and columns.

Times are stored as naive UTC on every backend, so the views format them the same way everywhere.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    cast,
    func,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select

from jobgraph.states import TERMINAL_TASK_STATES, AttemptStatus

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("run_id", String(36), primary_key=True),
    Column("pipeline", String(255), nullable=False, index=True),
    Column("state", String(16), nullable=False),
    Column("run_attempt", Integer, nullable=False, default=1),
    Column("started_at", DateTime, nullable=False),
    Column("scheduled_time", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("snapshot", Text, nullable=False),
    Column("owner", String(300)),
    Column("trigger", String(16)),
    Column("pipeline_version", String(64)),
)

task_runs = Table(
    "task_runs", metadata,
    Column("run_id", String(36), nullable=False),
    Column("task", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("pool", String(255), nullable=False),
    Column("image", Text, nullable=False),
    Column("predecessors", Text, nullable=False),
    Column("is_finalizer", Boolean, nullable=False, default=False),
    Column("started_at", DateTime),
    Column("finished_at", DateTime),
    Column("duration_secs", Float),
    Column("return_value", Text),
    Column("error_message", Text),
    PrimaryKeyConstraint("run_id", "task"),
    ForeignKeyConstraint(["run_id"], ["runs.run_id"], ondelete="CASCADE"),
)

attempts = Table(
    "attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("task", String(255), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("exit_code", Integer),
    Column("error", Text),
    Column("log_path", Text, nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("duration_secs", Float),
    Column("created_date", DateTime, nullable=False),
    UniqueConstraint("run_id", "task", "attempt"),
    ForeignKeyConstraint(["run_id", "task"], ["task_runs.run_id", "task_runs.task"], ondelete="CASCADE"),
)

pipelines = Table(
    "pipelines", metadata,
    Column("name", String(255), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("schedule", String(255)),
    Column("anchor", DateTime, nullable=False),
    Column("next_fire_at", DateTime),
    Column("failures_in_row", Integer, nullable=False, default=0),
    Column("deployed_at", DateTime, nullable=False),
    Column("note", Text),
)

pipeline_versions = Table(
    "pipeline_versions", metadata,
    Column("name", String(255), nullable=False),
    Column("version", String(64), nullable=False),
    Column("snapshot", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    PrimaryKeyConstraint("name", "version"),
)

fires = Table(
    "fires", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(255), nullable=False, index=True),
    Column("scheduled_time", DateTime, nullable=False),
    Column("action", String(16), nullable=False),
    Column("run_id", String(36)),
    Column("note", Text),
    Column("at", DateTime, nullable=False),
)

leases = Table(
    "leases", metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(300), nullable=False),
    Column("expires_at", DateTime, nullable=False),
)

SCHEMA_VERSION = "0002"
"""The newest migration (store/migrations/versions); a store at another version is migrated on open."""

VIEW_NAMES = ("jobs_run_stats", "task_logging_stats")


def _seconds_text(column: ColumnElement[object], dialect: Dialect) -> ColumnElement[str]:
    """`YYYY-MM-DD HH:MM:SS`, as the seed's TASK_GRAPH_RUN_STATS formats its times."""
    if dialect.name == "postgresql":
        return func.to_char(column, "YYYY-MM-DD HH24:MI:SS")
    return func.strftime("%Y-%m-%d %H:%M:%S", column)


def view_selects(dialect: Dialect) -> dict[str, Select[tuple[object, ...]]]:
    """The views' queries: the seed's column names first, then jobgraph's extra columns."""
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
    terminal = sorted(s.value for s in TERMINAL_TASK_STATES)
    task_logging_stats = select(
        task_runs.c.run_id.label("graph_run_group_id"),
        task_runs.c.task.label("name"),
        task_runs.c.state,
        task_runs.c.return_value,
        _seconds_text(task_runs.c.started_at, dialect).label("query_start_time"),
        _seconds_text(task_runs.c.finished_at, dialect).label("completed_time"),
        cast(func.round(task_runs.c.duration_secs), Integer).label("duration_in_secs"),
        task_runs.c.error_message,
    ).where(task_runs.c.state.in_(terminal))
    return {"jobs_run_stats": jobs_run_stats, "task_logging_stats": task_logging_stats}
