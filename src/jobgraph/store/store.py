"""The record of every run, job and attempt: written at each engine event, read by the CLI.

It is an engine listener (`store(event)`), so the engine never imports SQLAlchemy, and every
statement is a SQLAlchemy Core construct with bound parameters.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import Connection, Engine, and_, bindparam, create_engine, event, insert, select, update
from sqlalchemy.exc import ArgumentError

from jobgraph.engine.events import AttemptEnded, AttemptStarted, Event, RunEnded, RunStarted, TaskChanged
from jobgraph.errors import StoreError
from jobgraph.owner import owner_is_gone, owner_label
from jobgraph.states import TERMINAL_TASK_STATES, AttemptStatus, RunState, TaskState
from jobgraph.store.faults import watch
from jobgraph.store.schema import migrate as migrate_to
from jobgraph.store.schema import schema_version as schema_version
from jobgraph.store.tables import SCHEMA_VERSION, VIEW_NAMES, attempts, runs, task_runs, view_selects

DEFAULT_URL = "sqlite:///.jobgraph/jobgraph.db"

_INSERT_ATTEMPT = insert(attempts)
_UPDATE_ATTEMPT = update(attempts).where(and_(
    attempts.c.run_id == bindparam("k_run"), attempts.c.task == bindparam("k_task"),
    attempts.c.attempt == bindparam("k_attempt")))
_UPDATE_TASK = update(task_runs).where(and_(
    task_runs.c.run_id == bindparam("k_run"), task_runs.c.task == bindparam("k_task")))
_END_RUN = update(runs).where(and_(runs.c.run_id == bindparam("k_run"), runs.c.owner == bindparam("k_owner")))


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


def _utc(value: datetime) -> datetime:
    """Naive UTC for storage, the same on every backend."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


@overload
def _aware(value: datetime) -> datetime: ...
@overload
def _aware(value: None) -> None: ...
def _aware(value: datetime | None) -> datetime | None:
    """Stored naive UTC back to an aware datetime."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class RunBusy(StoreError):
    """Another process owns the run (it runs or is being retried), so this one must not touch it."""


class Store:
    """A jobgraph store on any SQLAlchemy URL; SQLite (WAL) by default.

    Each run has one writer, named in its `owner` column: the process that started it, or the one
    that won `claim_run` to retry it, or `take_over` to close it after its owner died.
    """

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = url
        self.owner = owner_label()
        """This process, as every run it writes records it."""
        self._engine = _open_engine(url)
        self._connection: Connection | None = None
        self._task_started: dict[tuple[str, str], datetime] = {}
        migrate(self._engine, url=url)

    @property
    def _conn(self) -> Connection:
        if self._connection is None:
            self._connection = self._engine.connect()
        return self._connection

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def __call__(self, event: Event) -> None:
        """Record one engine event (see `record`): a Store is an engine listener."""
        self.record(event)

    def record(self, event: Event) -> None:
        """Record one engine event, in its own transaction, before the engine goes on.

        The statements are built once (module constants) and take their values as bound parameters,
        so a write costs a SQLite commit and little more: this is the engine's hot path. A failure
        raises (a StoreFault for the store's own faults) and changes nothing, so the same event can
        be written again; `RunRecorder` does that.
        """
        conn = self._conn
        started: tuple[tuple[str, str], datetime] | None = None
        try:
            with conn.begin():
                if isinstance(event, RunStarted):
                    self._run_started(conn, event)
                elif isinstance(event, TaskChanged):
                    started = self._task_changed(conn, event)
                elif isinstance(event, AttemptStarted):
                    conn.execute(_INSERT_ATTEMPT, {
                        "run_id": event.run_id, "task": event.task, "attempt": event.attempt,
                        "status": AttemptStatus.RUNNING.value, "log_path": str(event.log_path),
                        "started_at": _utc(event.at), "created_date": _utc(event.at)})
                elif isinstance(event, AttemptEnded):
                    conn.execute(_UPDATE_ATTEMPT, {
                        "k_run": event.run_id, "k_task": event.task, "k_attempt": event.attempt,
                        "status": event.status.value, "exit_code": event.exit_code, "error": event.error,
                        "finished_at": _utc(event.at), "created_date": _utc(event.at),
                        "duration_secs": (event.at - event.started_at).total_seconds()})
                elif isinstance(event, RunEnded):
                    ended = conn.execute(_END_RUN, {"k_run": event.run_id, "k_owner": self.owner,
                                                    "state": event.state.value, "finished_at": _utc(event.at)})
                    if ended.rowcount != 1:
                        raise RunBusy(f"run {event.run_id} is no longer this process's to record: "
                                      f"{busy_reason(_read_run(conn, event.run_id))}")
        except BaseException:
            self._drop_connection()
            raise
        if isinstance(event, TaskChanged):
            key = (event.run_id, event.task)
            if started is not None:
                self._task_started[key] = started[1]
            elif event.state in TERMINAL_TASK_STATES:
                self._task_started.pop(key, None)

    def _run_started(self, conn: Connection, event: RunStarted) -> None:
        if event.run_attempt > 1:
            # `claim_run` made this process the run's writer; this only checks that it still is.
            claimed = conn.execute(update(runs).where(and_(
                runs.c.run_id == event.run_id, runs.c.owner == self.owner,
                runs.c.run_attempt == event.run_attempt, runs.c.state == RunState.RUNNING.value)).values(
                snapshot=event.snapshot, pipeline_version=event.version))
            if claimed.rowcount != 1:
                raise RunBusy(f"run {event.run_id} was not claimed for attempt {event.run_attempt} by this "
                              f"process: {busy_reason(_read_run(conn, event.run_id))}")
            if event.resumed:  # a job whose last attempt ended DONE may still be recorded as unfinished
                conn.execute(update(task_runs).where(and_(
                    task_runs.c.run_id == event.run_id, task_runs.c.task.in_(event.resumed),
                    task_runs.c.state != TaskState.SUCCEEDED.value)).values(
                    state=TaskState.SUCCEEDED.value, error_message=None))
            for info in event.tasks:
                if info.name not in event.resumed:
                    conn.execute(update(task_runs).where(and_(
                        task_runs.c.run_id == event.run_id, task_runs.c.task == info.name)).values(
                        state=TaskState.PENDING.value, started_at=None, finished_at=None, duration_secs=None,
                        return_value=None, error_message=None, pool=info.pool, image=info.image))
            return
        conn.execute(insert(runs).values(
            run_id=event.run_id, pipeline=event.pipeline, state=RunState.RUNNING.value,
            run_attempt=event.run_attempt, started_at=_utc(event.at), trigger=event.trigger,
            pipeline_version=event.version, scheduled_time=_utc(event.scheduled_time), snapshot=event.snapshot,
            owner=self.owner))
        conn.execute(insert(task_runs), [
            {"run_id": event.run_id, "task": t.name, "state": TaskState.PENDING.value, "attempts": 0,
             "pool": t.pool, "image": t.image, "predecessors": json.dumps(list(t.predecessors)),
             "is_finalizer": t.is_finalizer}
            for t in event.tasks
        ])

    def _task_changed(self, conn: Connection, event: TaskChanged) -> tuple[tuple[str, str], datetime] | None:
        """Write a job's new state; return the start time to remember once the write succeeded."""
        key = (event.run_id, event.task)
        values: dict[str, Any] = {"state": event.state.value}
        remember = None
        if event.attempt:
            values["attempts"] = event.attempt
        if event.state == TaskState.RUNNING and key not in self._task_started:
            remember = (key, event.at)
            values["started_at"] = _utc(event.at)
        if event.state in TERMINAL_TASK_STATES:
            values["finished_at"] = _utc(event.at)
            values["error_message"] = event.reason
            values["return_value"] = event.return_value
            started = self._task_started.get(key)
            if started is not None:
                values["duration_secs"] = (event.at - started).total_seconds()
        conn.execute(_UPDATE_TASK, {"k_run": event.run_id, "k_task": event.task, **values})
        return remember

    def claim_run(self, seen: RunRecord) -> RunRecord:
        """Make this process the one writer of a finished run's next attempt, or raise RunBusy.

        A compare-and-set on the state and attempt number this process saw: of any number of
        processes that saw the run alike, exactly one wins, on every backend, and the others are
        told who did. Return the run as claimed (RUNNING, next attempt, owned by this process).
        """
        if seen.state == RunState.RUNNING:
            raise RunBusy(busy_reason(seen))
        with self._engine.begin() as conn:
            won = conn.execute(update(runs).where(and_(
                runs.c.run_id == seen.run_id, runs.c.state == seen.state.value,
                runs.c.run_attempt == seen.run_attempt)).values(
                state=RunState.RUNNING.value, owner=self.owner, run_attempt=runs.c.run_attempt + 1,
                finished_at=None)).rowcount == 1
        if not won:
            raise RunBusy(busy_reason(self.run(seen.run_id)))
        return replace(seen, state=RunState.RUNNING, run_attempt=seen.run_attempt + 1, owner=self.owner,
                       finished_at=None)

    def take_over(self, lost: RunRecord) -> bool:
        """Become the owner of a RUNNING run whose owner died, to close it; False if another process did first."""
        with self._engine.begin() as conn:
            return bool(conn.execute(update(runs).where(and_(
                runs.c.run_id == lost.run_id, runs.c.state == RunState.RUNNING.value,
                runs.c.owner == lost.owner, runs.c.run_attempt == lost.run_attempt)).values(
                owner=self.owner)).rowcount == 1)

    def runs(self, limit: int = 20, pipeline: str | None = None) -> list[RunRecord]:
        """The newest runs first."""
        query = select(runs).order_by(runs.c.started_at.desc()).limit(limit)
        if pipeline is not None:
            query = query.where(runs.c.pipeline == pipeline)
        with self._engine.connect() as conn:
            return [_run_record(row) for row in conn.execute(query).mappings()]

    def running_runs(self) -> list[RunRecord]:
        """Runs recorded as RUNNING: live ones, and any whose orchestrator died."""
        with self._engine.connect() as conn:
            query = select(runs).where(runs.c.state == RunState.RUNNING.value)
            return [_run_record(row) for row in conn.execute(query).mappings()]

    def mark_lost(self, run_id: str, reason: str) -> bool:
        """Close the records of a run whose orchestrator died; False if it is not this process's to close.

        The run must be RUNNING and owned by this process (see `take_over`) or by a process that is
        gone. A job whose last attempt ended DONE succeeded (jobgraph died between recording the
        attempt and the job); every other unfinished attempt and job is CANCELLED, and so is the run.
        """
        run = self.run(run_id)
        mine = run.owner == self.owner or (run.owner is not None and owner_is_gone(run.owner))
        if run.state != RunState.RUNNING or not mine:
            return False
        at = _utc(datetime.now(UTC))
        unfinished = sorted(s.value for s in set(TaskState) - TERMINAL_TASK_STATES)
        with self._engine.begin() as conn:
            closed = conn.execute(update(runs).where(and_(
                runs.c.run_id == run.run_id, runs.c.state == RunState.RUNNING.value, runs.c.owner == run.owner,
                runs.c.run_attempt == run.run_attempt)).values(state=RunState.CANCELLED.value, finished_at=at))
            if closed.rowcount != 1:
                conn.rollback()
                return False
            conn.execute(update(attempts).where(and_(
                attempts.c.run_id == run.run_id, attempts.c.status == AttemptStatus.RUNNING.value)).values(
                status=AttemptStatus.CANCELLED.value, error=reason, finished_at=at, created_date=at))
            last = _last_attempts(conn, run.run_id)
            open_tasks = conn.execute(select(task_runs.c.task, task_runs.c.started_at).where(and_(
                task_runs.c.run_id == run.run_id, task_runs.c.state.in_(unfinished)))).all()
            for task, started_at in open_tasks:
                done = last.get(task)
                if done is None or done[1] != AttemptStatus.DONE.value:
                    continue
                conn.execute(_UPDATE_TASK, {
                    "k_run": run.run_id, "k_task": task, "state": TaskState.SUCCEEDED.value, "attempts": done[0],
                    "finished_at": done[2], "error_message": None,
                    "duration_secs": (done[2] - started_at).total_seconds() if done[2] and started_at else None})
            conn.execute(update(task_runs).where(and_(
                task_runs.c.run_id == run.run_id, task_runs.c.state.in_(unfinished))).values(
                state=TaskState.CANCELLED.value, error_message=reason, finished_at=at))
        return True

    def settled_tasks(self, run_id: str) -> list[TaskRecord]:
        """Every job of a run as a retry sees it: one whose last attempt ended DONE succeeded, whatever its row says.

        A kill -9 between the attempt's record and the job's leaves the job unfinished (or, recovered
        by an older jobgraph, CANCELLED) although its work is done; a retry must not run it again.
        """
        with self._engine.connect() as conn:
            last = _last_attempts(conn, run_id)
        settled = []
        for task in self.tasks(run_id):
            done = last.get(task.task)
            if task.state != TaskState.SUCCEEDED and done is not None and done[1] == AttemptStatus.DONE.value:
                task = replace(task, state=TaskState.SUCCEEDED, attempts=done[0], error_message=None)
            settled.append(task)
        return settled

    def run(self, run_id: str) -> RunRecord:
        """One run, by its id or a unique prefix of it (as git takes short hashes)."""
        if not run_id or len(run_id) > 36:
            raise StoreError(f"no run with id {run_id!r}")
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(runs).where(runs.c.run_id.startswith(run_id, autoescape=True)).limit(2)
            ).mappings().all()
        if not rows:
            raise StoreError(f"no run with id {run_id!r} in {self.url}")
        if len(rows) > 1:
            raise StoreError(f"run id {run_id!r} is ambiguous; give more of it")
        return _run_record(rows[0])

    def tasks(self, run_id: str) -> list[TaskRecord]:
        """Every job of a run, in the order the run listed them."""
        query = select(task_runs).where(task_runs.c.run_id == run_id)
        with self._engine.connect() as conn:
            return [TaskRecord(
                task=row["task"], state=TaskState(row["state"]), attempts=row["attempts"], pool=row["pool"],
                image=row["image"], predecessors=tuple(json.loads(row["predecessors"])),
                is_finalizer=row["is_finalizer"], started_at=_aware(row["started_at"]),
                finished_at=_aware(row["finished_at"]), duration_secs=row["duration_secs"],
                return_value=row["return_value"], error_message=row["error_message"],
            ) for row in conn.execute(query).mappings()]

    def attempts(self, run_id: str, task: str | None = None) -> list[AttemptRecord]:
        """Every attempt of a run (or of one of its jobs), oldest first."""
        query = select(attempts).where(attempts.c.run_id == run_id).order_by(attempts.c.id)
        if task is not None:
            query = query.where(attempts.c.task == task)
        with self._engine.connect() as conn:
            return [AttemptRecord(
                task=row["task"], attempt=row["attempt"], status=AttemptStatus(row["status"]),
                exit_code=row["exit_code"], error=row["error"], log_path=Path(row["log_path"]),
                started_at=_aware(row["started_at"]),
                finished_at=_aware(row["finished_at"]), duration_secs=row["duration_secs"],
            ) for row in conn.execute(query).mappings()]

    def view(self, name: str, limit: int = 10) -> tuple[list[str], list[Sequence[Any]]]:
        """Rows of one of the seed's views, newest first, as the quickstart queries them."""
        if name not in VIEW_NAMES:
            raise StoreError(f"no view named {name!r}; the views are {', '.join(VIEW_NAMES)}")
        with self._engine.connect() as conn:
            query = view_selects(conn.dialect)[name].subquery()
            order = query.c.created_date if name == "jobs_run_stats" else query.c.completed_time
            result = conn.execute(select(query).order_by(order.desc(), *query.c).limit(limit))
            return list(result.keys()), [tuple(row) for row in result]


def migrate(engine: Engine, to: str = SCHEMA_VERSION, url: str | None = None) -> None:
    """Bring the store's schema to `to`, once, under the store's migration lock (see store/schema.py)."""
    migrate_to(engine, to, url)


def busy_reason(run: RunRecord) -> str:
    """Who has a run, said so that the user knows whether to wait or look."""
    if run.state == RunState.RUNNING and run.run_attempt > 1:
        return f"run {run.run_id} is already being retried by {run.owner} (attempt {run.run_attempt})"
    if run.state == RunState.RUNNING:
        return f"run {run.run_id} is still running (by {run.owner})"
    return f"run {run.run_id} was retried meanwhile by {run.owner} (attempt {run.run_attempt}, now {run.state})"


def _last_attempts(conn: Connection, run_id: str) -> dict[str, tuple[int, str, datetime | None]]:
    """Each job's last attempt: its number, status and end."""
    last: dict[str, tuple[int, str, datetime | None]] = {}
    rows = conn.execute(select(attempts.c.task, attempts.c.attempt, attempts.c.status, attempts.c.finished_at)
                        .where(attempts.c.run_id == run_id).order_by(attempts.c.attempt))
    for task, number, status, finished_at in rows:
        last[task] = (number, status, finished_at)
    return last


def _read_run(conn: Connection, run_id: str) -> RunRecord:
    row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
    if row is None:
        raise StoreError(f"no run with id {run_id!r}")
    return _run_record(row)


def _run_record(row: Any) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"], pipeline=row["pipeline"], state=RunState(row["state"]),
        run_attempt=row["run_attempt"], started_at=_aware(row["started_at"]),
        finished_at=_aware(row["finished_at"]), snapshot=row["snapshot"], owner=row["owner"],
        version=row["pipeline_version"], trigger=row["trigger"],
    )


def _open_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url) if url.startswith("sqlite") else create_engine(url, pool_pre_ping=True)
    except ImportError as exc:
        raise StoreError(f"cannot use the store URL {url!r}: {exc} (for PostgreSQL: "
                         "pip install 'jobgraph[postgres]')") from None
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"cannot use the store URL {url!r}: {exc}") from None
    except OSError as exc:
        raise StoreError(f"cannot create the store's folder for {url!r}: {exc.strerror}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    watch(engine, url)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (history, the web page) read while a run writes; NORMAL sync is safe in WAL.

    The busy timeout comes first: switching a new file to WAL takes a lock that other processes
    opening the same new store at the same moment must wait for, not fail on.
    """
    cursor = dbapi_connection.cursor()
    for pragma in ("busy_timeout=10000", "journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
