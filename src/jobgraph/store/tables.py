"""The store's tables (the seed's views over them are in views.py).

Times are time-zone aware where the backend can store it (PostgreSQL `timestamptz`); SQLite has no
such type, so it stores UTC text (`YYYY-MM-DD HH:MM:SS.ffffff`) and the store reads it back as UTC.
`task_runs` keeps one row per job and graph run attempt, and `attempts` one per execution: a retry
adds rows, so the history of every attempt of a run stays.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

Timestamp = DateTime(timezone=True)
"""Every time column: `timestamptz` on PostgreSQL; UTC text on SQLite (the store writes UTC)."""


runs = Table(
    "runs", metadata,
    Column("run_id", String(36), primary_key=True),
    Column("pipeline", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("run_attempt", Integer, nullable=False, default=1),
    Column("started_at", Timestamp, nullable=False),
    Column("scheduled_time", Timestamp, nullable=False),
    Column("finished_at", Timestamp),
    Column("snapshot", Text, nullable=False),
    Column("owner", String(300)),
    Column("trigger", String(16)),
    Column("pipeline_version", String(64)),
    Column("cancel_requested_at", Timestamp),
    Column("cancel_requested_by", String(300)),
    Column("params", Text),
    Column("selection", Text),
    Index("ix_runs_started_at", "started_at", "run_id"),
    Index("ix_runs_pipeline_started_at", "pipeline", "started_at", "run_id"),
    Index("ix_runs_state_started_at", "state", "started_at", "run_id"),
)

task_runs = Table(
    "task_runs", metadata,
    Column("run_id", String(36), nullable=False),
    Column("task", String(255), nullable=False),
    Column("run_attempt", Integer, nullable=False, default=1),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("pool", String(255), nullable=False),
    Column("image", Text, nullable=False),
    Column("predecessors", Text, nullable=False),
    Column("is_finalizer", Boolean, nullable=False, default=False),
    Column("started_at", Timestamp),
    Column("finished_at", Timestamp),
    Column("duration_secs", Float),
    Column("return_value", Text),
    Column("error_message", Text),
    Column("item", Text),
    PrimaryKeyConstraint("run_id", "task", "run_attempt", name="pk_task_runs"),
    ForeignKeyConstraint(["run_id"], ["runs.run_id"], ondelete="CASCADE", name="fk_task_runs_run"),
)

attempts = Table(
    "attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("task", String(255), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("run_attempt", Integer, nullable=False, default=1),
    Column("status", String(16), nullable=False),
    Column("exit_code", Integer),
    Column("error", Text),
    Column("log_path", Text, nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp),
    Column("duration_secs", Float),
    Column("created_date", Timestamp, nullable=False),
    Column("runner", String(32)),
    Column("backend_ref", String(255)),
    UniqueConstraint("run_id", "task", "attempt", name="uq_attempts_run_task_attempt"),
    ForeignKeyConstraint(["run_id", "task", "run_attempt"],
                         ["task_runs.run_id", "task_runs.task", "task_runs.run_attempt"],
                         ondelete="CASCADE", name="fk_attempts_task_run"),
)

pipelines = Table(
    "pipelines", metadata,
    Column("name", String(255), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("schedule", String(255)),
    Column("anchor", Timestamp, nullable=False),
    Column("next_fire_at", Timestamp),
    Column("failures_in_row", Integer, nullable=False, default=0),
    Column("deployed_at", Timestamp, nullable=False),
    Column("note", Text),
)

pipeline_versions = Table(
    "pipeline_versions", metadata,
    Column("name", String(255), nullable=False),
    Column("version", String(64), nullable=False),
    Column("snapshot", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("name", "version"),
)

fires = Table(
    "fires", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(255), nullable=False, index=True),
    Column("scheduled_time", Timestamp, nullable=False),
    Column("action", String(16), nullable=False),
    Column("run_id", String(36)),
    Column("note", Text),
    Column("at", Timestamp, nullable=False),
)

leases = Table(
    "leases", metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(300), nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)

api_tokens = Table(
    "api_tokens", metadata,
    Column("token_id", String(32), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Timestamp, nullable=False),
    Column("last_used_at", Timestamp),
    Column("expires_at", Timestamp),
    Column("revoked_at", Timestamp),
)

notifications = Table(
    "notifications", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("pipeline", String(255), nullable=False),
    Column("event", String(32), nullable=False),
    Column("task", String(255)),
    Column("target", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("tries", Integer, nullable=False),
    Column("error", Text),
    Column("created_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp),
    Index("ix_notifications_run", "run_id"),
    ForeignKeyConstraint(["run_id"], ["runs.run_id"], ondelete="CASCADE", name="fk_notifications_run"),
)

SCHEMA_VERSION = "0006"
"""The newest migration (store/migrations/versions); a store at another version is migrated on open."""
