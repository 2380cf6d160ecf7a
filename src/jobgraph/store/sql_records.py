"""The store through SQLAlchemy: PostgreSQL, every query of `history`, `show` and the views, migrations, retries.

`Store` (store.py) builds this only when it needs it: for a SQLite store, `jobgraph run` records
through store/sqlite_records.py and never imports SQLAlchemy. Every statement is a SQLAlchemy Core
construct with bound parameters; what each engine event writes is in store/writer.py.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    column,
    create_engine,
    event,
    exists,
    func,
    insert,
    select,
    table,
    update,
)
from sqlalchemy.exc import ArgumentError

from jobgraph.errors import StoreError
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store.cancel_requests import CancelRequests
from jobgraph.store.faults import store_name, watch
from jobgraph.store.ownership import RunOwnership
from jobgraph.store.records import (
    VIEW_NAMES,
    VIEW_ORDER,
    AttemptRecord,
    NotificationRecord,
    RunRecord,
    RunSummary,
    TaskRecord,
    aware,
    run_record,
    task_record,
)
from jobgraph.store.schema import migrate as migrate_to
from jobgraph.store.schema import schema_version as schema_version
from jobgraph.store.sqlite_records import sqlite_file, sqlite_pragmas
from jobgraph.store.tables import SCHEMA_VERSION, attempts, notifications, runs, task_runs
from jobgraph.store.views import current_views
from jobgraph.store.writer import EventWriter, Params

_RUN_ATTEMPT = select(runs.c.run_attempt).where(runs.c.run_id == bindparam("k_run")).scalar_subquery()
"""The graph run attempt now running: an event's job and attempt rows belong to it."""

_LATER = task_runs.alias("later")
_LATEST = ~exists().where(and_(_LATER.c.run_id == task_runs.c.run_id, _LATER.c.task == task_runs.c.task,
                               _LATER.c.run_attempt > task_runs.c.run_attempt))
"""A job's row of the latest graph run attempt that ran it: its current state."""

_INSERT_ATTEMPT = insert(attempts).values(run_attempt=_RUN_ATTEMPT)
_UPDATE_ATTEMPT = update(attempts).where(and_(
    attempts.c.run_id == bindparam("k_run"), attempts.c.task == bindparam("k_task"),
    attempts.c.attempt == bindparam("k_attempt")))
_ADOPT_ATTEMPT = _UPDATE_ATTEMPT.values(run_attempt=_RUN_ATTEMPT)
_UPDATE_TASK = update(task_runs).where(and_(
    task_runs.c.run_id == bindparam("k_run"), task_runs.c.task == bindparam("k_task"),
    task_runs.c.run_attempt == _RUN_ATTEMPT))

_END_RUN = update(runs).where(and_(runs.c.run_id == bindparam("k_run"), runs.c.owner == bindparam("k_owner")))
_CHECK_CLAIM = update(runs).where(and_(
    runs.c.run_id == bindparam("k_run"), runs.c.owner == bindparam("k_owner"),
    runs.c.run_attempt == bindparam("k_run_attempt"), runs.c.state == bindparam("k_state")))
_RESUME_SUCCEEDED = update(task_runs).where(and_(
    task_runs.c.run_id == bindparam("k_run"), task_runs.c.task == bindparam("k_task"), _LATEST,
    task_runs.c.state != TaskState.SUCCEEDED.value)).values(state=TaskState.SUCCEEDED.value, error_message=None)

_STATEMENTS: dict[str, Any] = {
    "insert_run": insert(runs), "insert_tasks": insert(task_runs), "check_claim": _CHECK_CLAIM,
    "resume_succeeded": _RESUME_SUCCEEDED,
    "latest_attempts": select(task_runs.c.task, task_runs.c.attempts).where(
        task_runs.c.run_id == bindparam("k_run"), _LATEST),
    "insert_attempt": _INSERT_ATTEMPT, "adopt_attempt": _ADOPT_ATTEMPT, "submit_attempt": _UPDATE_ATTEMPT,
    "end_attempt": _UPDATE_ATTEMPT, "end_run": _END_RUN, "update_task": _UPDATE_TASK,
    "insert_notification": insert(notifications),
}
"""What each of store/writer.py's statements is, as a SQLAlchemy Core construct."""


class SqlStore(EventWriter, RunOwnership, CancelRequests):
    """A jobgraph store on any SQLAlchemy URL.

    Each run has one writer, named in its `owner` column (see RunOwnership): the process that
    started it, or the one that claimed it to retry it, or took it over to close it.
    """

    def __init__(self, url: str, owner: str) -> None:
        super().__init__()
        self.url = url
        self.owner = owner
        self._engine = _open_engine(url)
        self._connection: Connection | None = None
        migrate(self._engine, url=url)

    @property
    def _conn(self) -> Connection:
        if self._connection is None:
            self._connection = self._engine.connect()
        return self._connection

    def close(self) -> None:
        """Close the connection and the engine's pool."""
        self._drop_connection()
        self._engine.dispose()

    def _drop_connection(self) -> None:
        """Forget the writing connection (after a failure it may be dead); the next write opens a new one."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            with self._conn.begin():
                yield
        except BaseException:
            self._drop_connection()
            raise

    def _execute(self, name: str, params: Params) -> int:
        return int(self._conn.execute(_STATEMENTS[name], params).rowcount)

    def _execute_many(self, name: str, rows: list[Params]) -> None:
        self._conn.execute(_STATEMENTS[name], rows)

    def _select(self, name: str, params: Params) -> Iterator[tuple[Any, ...]]:
        return (tuple(row) for row in self._conn.execute(_STATEMENTS[name], params))

    def _read_run(self, run_id: str) -> RunRecord:
        return _read_run(self._conn, run_id)

    def runs(self, limit: int = 20, pipeline: str | None = None) -> list[RunSummary]:
        """The newest runs first, with their jobs counted by state: two queries, no pipeline snapshot."""
        query = select(runs.c.run_id, runs.c.pipeline, runs.c.state, runs.c.run_attempt, runs.c.started_at,
                       runs.c.finished_at, runs.c.scheduled_time, runs.c.selection).order_by(
            runs.c.started_at.desc(), runs.c.run_id).limit(limit)
        if pipeline is not None:
            query = query.where(runs.c.pipeline == pipeline)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            counts: dict[str, Counter[str]] = {row["run_id"]: Counter() for row in rows}
            if counts:
                per_state = select(task_runs.c.run_id, task_runs.c.state, func.count()).where(
                    task_runs.c.run_id.in_(list(counts)), _LATEST).group_by(task_runs.c.run_id, task_runs.c.state)
                for run_id, state, count in conn.execute(per_state):
                    counts[run_id][state] = count
        return [RunSummary(
            run_id=row["run_id"], pipeline=row["pipeline"], state=RunState(row["state"]),
            run_attempt=row["run_attempt"], started_at=aware(row["started_at"]),
            finished_at=aware(row["finished_at"]), scheduled_time=aware(row["scheduled_time"]),
            task_counts=dict(counts[row["run_id"]]), selection=row["selection"],
        ) for row in rows]

    def running_runs(self) -> list[RunRecord]:
        """Runs recorded as RUNNING: live ones, and any whose orchestrator died."""
        with self._engine.connect() as conn:
            query = select(runs).where(runs.c.state == RunState.RUNNING.value)
            return [run_record(row) for row in conn.execute(query).mappings()]

    def run(self, run_id: str) -> RunRecord:
        """One run, by its id or a unique prefix of it (as git takes short hashes)."""
        if not run_id or len(run_id) > 36:
            raise StoreError(f"no run with id {run_id!r}")
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(runs).where(runs.c.run_id.startswith(run_id, autoescape=True)).limit(2)
            ).mappings().all()
        if not rows:
            raise StoreError(f"no run with id {run_id!r} in {store_name(self.url)}")
        if len(rows) > 1:
            raise StoreError(f"run id {run_id!r} is ambiguous; give more of it")
        return run_record(rows[0])

    def tasks(self, run_id: str) -> list[TaskRecord]:
        """Every job of a run as it stands now (its row of the latest graph run attempt that ran it), by name."""
        query = select(task_runs).where(task_runs.c.run_id == run_id, _LATEST).order_by(task_runs.c.task)
        with self._engine.connect() as conn:
            return [task_record(row) for row in conn.execute(query).mappings()]

    def attempts(self, run_id: str, task: str | None = None) -> list[AttemptRecord]:
        """Every attempt of a run (or of one of its jobs), oldest first."""
        query = select(attempts).where(attempts.c.run_id == run_id).order_by(attempts.c.id)
        if task is not None:
            query = query.where(attempts.c.task == task)
        with self._engine.connect() as conn:
            return [AttemptRecord(
                task=row["task"], attempt=row["attempt"], status=AttemptStatus(row["status"]),
                exit_code=row["exit_code"], error=row["error"], log_path=Path(row["log_path"]),
                started_at=aware(row["started_at"]),
                finished_at=aware(row["finished_at"]), duration_secs=row["duration_secs"],
                run_attempt=row["run_attempt"], runner=row["runner"], backend_ref=row["backend_ref"],
            ) for row in conn.execute(query).mappings()]

    def notifications(self, run_id: str) -> list[NotificationRecord]:
        """Every notification a run sent or failed to send, oldest first."""
        query = select(notifications).where(notifications.c.run_id == run_id).order_by(notifications.c.id)
        with self._engine.connect() as conn:
            return [NotificationRecord(
                run_id=row["run_id"], pipeline=row["pipeline"], event=row["event"], task=row["task"],
                target=row["target"], state=row["state"], tries=row["tries"], error=row["error"],
                created_at=aware(row["created_at"]), finished_at=aware(row["finished_at"]),
            ) for row in conn.execute(query).mappings()]

    def view(self, name: str, limit: int = 10) -> tuple[list[str], list[Sequence[Any]]]:
        """Rows of one of the views in the store, newest first, as the quickstart queries them."""
        if name not in VIEW_NAMES:
            raise StoreError(f"no view named {name!r}; the views are {', '.join(VIEW_NAMES)}")
        with self._engine.connect() as conn:
            columns = current_views(conn.dialect)[name].selected_columns
            stored = table(name, *(column(str(c.key), c.type) for c in columns))
            order = stored.c[VIEW_ORDER[name]]
            result = conn.execute(select(stored).order_by(order.desc(), *stored.c).limit(limit))
            return list(result.keys()), [tuple(aware(v) if isinstance(v, datetime) else v for v in row)
                                         for row in result]


def migrate(engine: Engine, to: str = SCHEMA_VERSION, url: str | None = None) -> None:
    """Bring the store's schema to `to`, once, under the store's migration lock (see store/schema.py)."""
    migrate_to(engine, to, url)


def _read_run(conn: Connection, run_id: str) -> RunRecord:
    row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
    if row is None:
        raise StoreError(f"no run with id {run_id!r}")
    return run_record(row)


def _open_engine(url: str) -> Engine:
    try:
        sqlite_file(url)  # makes its folder
        engine = create_engine(url) if url.startswith("sqlite") else create_engine(url, pool_pre_ping=True)
    except ImportError as exc:
        raise StoreError(f"cannot use the store URL {url!r}: {exc} (for PostgreSQL: "
                         "pip install 'jobgraph[postgres]')") from None
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"cannot use the store URL {url!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda dbapi_connection, _record: sqlite_pragmas(dbapi_connection))
    watch(engine, url)
    return engine
