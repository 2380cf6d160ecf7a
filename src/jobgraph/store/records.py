"""What the store hands back (runs, jobs, attempts) and how it reads and writes times, without SQLAlchemy.

Both ways of writing a store (store/sql_records.py through SQLAlchemy, store/sqlite_records.py through
the standard library's sqlite3) and every reader share these, so `jobgraph run` on SQLite never
imports SQLAlchemy and both ways agree on every value: times are UTC (`YYYY-MM-DD HH:MM:SS.ffffff`
text on SQLite, as SQLAlchemy writes them), and a stored time is read back as aware UTC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from jobgraph.errors import StoreError
from jobgraph.states import AttemptStatus, RunState, TaskState

DEFAULT_URL = "sqlite:///.jobgraph/jobgraph.db"

VIEW_NAMES = ("jobs_run_stats", "task_logging_stats", "job_attempts")
"""The views `jobgraph stats` shows (defined in views.py), in the order the README lists them."""

VIEW_ORDER = {"jobs_run_stats": "created_date", "task_logging_stats": "completed_time",
              "job_attempts": "start_time"}
"""The column `jobgraph stats` orders each view by, newest first (as the quickstart orders jobs_run_stats)."""


@dataclass(frozen=True)
class RunRecord:
    """One graph run as stored."""

    run_id: str
    pipeline: str
    state: RunState
    run_attempt: int
    started_at: datetime
    finished_at: datetime | None
    snapshot: str
    owner: str | None = None
    version: str | None = None
    trigger: str | None = None
    cancel_requested_at: datetime | None = None
    """When someone asked (from another process) to cancel this attempt of the run; None if nobody did."""
    cancel_requested_by: str | None = None
    """Who asked to cancel it (`jobgraph cancel`, the web page's signed-in token)."""
    selection: str | None = None
    """A partial run's choice of jobs and its targeted retries (jobgraph.selection), as JSON; None: a whole run."""


@dataclass(frozen=True)
class RunSummary:
    """One graph run as `history` lists it: no pipeline snapshot, and its jobs counted by state."""

    run_id: str
    pipeline: str
    state: RunState
    run_attempt: int
    started_at: datetime
    finished_at: datetime | None
    scheduled_time: datetime
    task_counts: Mapping[str, int]
    selection: str | None = None
    """As RunRecord.selection: how a partial run chose its jobs, and its targeted retries."""


@dataclass(frozen=True)
class TaskRecord:
    """One job of a run as stored."""

    task: str
    state: TaskState
    attempts: int
    pool: str
    image: str
    predecessors: tuple[str, ...]
    is_finalizer: bool
    started_at: datetime | None
    finished_at: datetime | None
    duration_secs: float | None
    return_value: str | None
    error_message: str | None
    run_attempt: int = 1


@dataclass(frozen=True)
class AttemptRecord:
    """One execution of a job as stored."""

    task: str
    attempt: int
    status: AttemptStatus
    exit_code: int | None
    error: str | None
    log_path: Path
    started_at: datetime
    finished_at: datetime | None
    duration_secs: float | None
    run_attempt: int = 1
    runner: str | None = None
    backend_ref: str | None = None


@dataclass(frozen=True)
class NotificationRecord:
    """One notification a run sent (or failed to send): to whom (`target`, never a secret URL), about what."""

    run_id: str
    pipeline: str
    event: str
    task: str | None
    target: str
    state: str
    tries: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None


NOTIFICATION_SENT = "SENT"
NOTIFICATION_FAILED = "FAILED"


class RunBusy(StoreError):
    """Another process owns the run (it runs or is being retried), so this one must not touch it."""


def busy_reason(run: RunRecord) -> str:
    """Who has a run, said so that the user knows whether to wait or look."""
    if run.state == RunState.RUNNING and run.run_attempt > 1:
        return f"run {run.run_id} is already being retried by {run.owner} (attempt {run.run_attempt})"
    if run.state == RunState.RUNNING:
        return f"run {run.run_id} is still running (by {run.owner})"
    return f"run {run.run_id} was retried meanwhile by {run.owner} (attempt {run.run_attempt}, now {run.state})"


def utc(value: datetime) -> datetime:
    """Aware UTC for storage (a naive value is taken as UTC): PostgreSQL keeps the zone, SQLite the UTC text."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def sqlite_text(value: datetime) -> str:
    """A time as SQLAlchemy stores it in a SQLite DATETIME column: UTC, to the microsecond, no zone."""
    return utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")


@overload
def aware(value: datetime | str) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | str | None) -> datetime | None:
    """A stored time as aware UTC, whichever zone the backend's session reads it in (SQLite: naive UTC text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def run_record(row: Any) -> RunRecord:
    """A `runs` row (any mapping of its columns) as a RunRecord."""
    return RunRecord(
        run_id=row["run_id"], pipeline=row["pipeline"], state=RunState(row["state"]),
        run_attempt=row["run_attempt"], started_at=aware(row["started_at"]),
        finished_at=aware(row["finished_at"]), snapshot=row["snapshot"], owner=row["owner"],
        version=row["pipeline_version"], trigger=row["trigger"],
        cancel_requested_at=aware(row["cancel_requested_at"]), cancel_requested_by=row["cancel_requested_by"],
        selection=row["selection"],
    )


def task_record(row: Any) -> TaskRecord:
    """A `task_runs` row (any mapping of its columns) as a TaskRecord."""
    return TaskRecord(
        task=row["task"], state=TaskState(row["state"]), attempts=row["attempts"], pool=row["pool"],
        image=row["image"], predecessors=tuple(json.loads(row["predecessors"])),
        is_finalizer=bool(row["is_finalizer"]), started_at=aware(row["started_at"]),
        finished_at=aware(row["finished_at"]), duration_secs=row["duration_secs"],
        return_value=row["return_value"], error_message=row["error_message"], run_attempt=row["run_attempt"],
    )
