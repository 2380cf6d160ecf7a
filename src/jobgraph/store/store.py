"""The record of every run, job and attempt: written at each engine event, read by the CLI.

It is an engine listener (`store(event)`), so the engine never imports SQLAlchemy, and every
statement is a SQLAlchemy Core construct with bound parameters.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

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

from jobgraph.engine.events import (
    AttemptAdopted,
    AttemptEnded,
    AttemptStarted,
    AttemptSubmitted,
    Event,
    RunEnded,
    RunStarted,
    TaskChanged,
)
from jobgraph.errors import StoreError
from jobgraph.owner import owner_label
from jobgraph.states import TERMINAL_TASK_STATES, AttemptStatus, RunState, TaskState
from jobgraph.store.faults import watch
from jobgraph.store.ownership import RunBusy, RunOwnership, busy_reason
from jobgraph.store.schema import migrate as migrate_to
from jobgraph.store.schema import schema_version as schema_version
from jobgraph.store.tables import SCHEMA_VERSION, attempts, runs, task_runs
from jobgraph.store.views import VIEW_NAMES, VIEW_ORDER, current_views

DEFAULT_URL = "sqlite:///.jobgraph/jobgraph.db"

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


def _utc(value: datetime) -> datetime:
    """Aware UTC for storage (a naive value is taken as UTC): PostgreSQL keeps the zone, SQLite the UTC text."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


@overload
def _aware(value: datetime) -> datetime: ...
@overload
def _aware(value: None) -> None: ...
def _aware(value: datetime | None) -> datetime | None:
    """A stored time as aware UTC, whichever zone the backend's session reads it in (SQLite: naive UTC)."""
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class Store(RunOwnership):
    """A jobgraph store on any SQLAlchemy URL; SQLite (WAL) by default.

    Each run has one writer, named in its `owner` column (see RunOwnership): the process that
    started it, or the one that claimed it to retry it, or took it over to close it.
    """

    essential = True
    """The engine cancels a run whose store listener fails: nothing runs unrecorded."""

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
        """Record one engine event, in its own transaction (see `record_all`)."""
        self.record_all((event,))

    def record_all(self, events: Sequence[Event]) -> None:
        """Record engine events, in order, in one transaction: the engine hands over each wake-up's events at once.

        The statements are built once (module constants) and take their values as bound parameters,
        so a batch costs one SQLite commit and little more: this is the engine's hot path. A failure
        raises (a StoreFault for the store's own faults) and changes nothing, so the same events can
        be written again; `RunRecorder` does that.
        """
        conn = self._conn
        started: dict[tuple[str, str], datetime | None] = {}  # what self._task_started becomes, once committed
        try:
            with conn.begin():
                for event in events:
                    self._write(conn, event, started)
        except BaseException:
            self._drop_connection()
            raise
        for key, at in started.items():
            if at is None:
                self._task_started.pop(key, None)
            else:
                self._task_started[key] = at

    def _write(self, conn: Connection, event: Event, started: dict[tuple[str, str], datetime | None]) -> None:
        """One event's statements, in the caller's transaction; `started` collects the jobs' start times."""
        if isinstance(event, RunStarted):
            self._run_started(conn, event)
        elif isinstance(event, TaskChanged):
            self._task_changed(conn, event, started)
        elif isinstance(event, AttemptStarted):
            conn.execute(_INSERT_ATTEMPT, {
                "k_run": event.run_id, "run_id": event.run_id, "task": event.task,
                "attempt": event.attempt, "status": AttemptStatus.RUNNING.value,
                "log_path": str(event.log_path), "started_at": _utc(event.at), "created_date": _utc(event.at)})
        elif isinstance(event, AttemptAdopted):
            conn.execute(_ADOPT_ATTEMPT, {"k_run": event.run_id, "k_task": event.task, "k_attempt": event.attempt})
        elif isinstance(event, AttemptSubmitted):
            conn.execute(_UPDATE_ATTEMPT, {
                "k_run": event.run_id, "k_task": event.task, "k_attempt": event.attempt,
                "runner": event.runner, "backend_ref": event.reference})
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

    def _run_started(self, conn: Connection, event: RunStarted) -> None:
        """A graph run attempt begins: its jobs get new rows, and an earlier attempt's rows stay as they ended.

        On a retry (run_attempt > 1) the jobs that succeeded before (`resumed`) get no row: their
        row of the attempt they succeeded in stays their current one. The others start from the
        attempt count they reached, so attempt numbers go on across graph run attempts.
        """
        counts: dict[str, int] = {}
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
                    task_runs.c.run_id == event.run_id, task_runs.c.task.in_(event.resumed), _LATEST,
                    task_runs.c.state != TaskState.SUCCEEDED.value)).values(
                    state=TaskState.SUCCEEDED.value, error_message=None))
            counts = {task: attempts for task, attempts in conn.execute(select(
                task_runs.c.task, task_runs.c.attempts).where(task_runs.c.run_id == event.run_id, _LATEST))}
        else:
            conn.execute(insert(runs).values(
                run_id=event.run_id, pipeline=event.pipeline, state=RunState.RUNNING.value,
                run_attempt=event.run_attempt, started_at=_utc(event.at), trigger=event.trigger,
                pipeline_version=event.version, scheduled_time=_utc(event.scheduled_time),
                snapshot=event.snapshot, owner=self.owner))
        resumed = set(event.resumed) | set(event.kept)  # kept as they were: their rows stay the current ones
        rows = [
            {"run_id": event.run_id, "task": t.name, "run_attempt": event.run_attempt,
             "state": TaskState.PENDING.value, "attempts": counts.get(t.name, 0), "pool": t.pool,
             "image": t.image, "predecessors": json.dumps(list(t.predecessors)), "is_finalizer": t.is_finalizer}
            for t in event.tasks if t.name not in resumed
        ]
        if rows:
            conn.execute(insert(task_runs), rows)

    def _task_changed(self, conn: Connection, event: TaskChanged, started: dict[tuple[str, str], datetime | None]
                      ) -> None:
        """Write a job's new state; note its start time in `started` (None: forget it), kept once committed."""
        key = (event.run_id, event.task)
        values: dict[str, Any] = {"state": event.state.value}
        since = started[key] if key in started else self._task_started.get(key)
        if event.attempt:
            values["attempts"] = event.attempt
        if event.state == TaskState.RUNNING and since is None:
            started[key] = event.at
            values["started_at"] = _utc(event.at)
        if event.state in TERMINAL_TASK_STATES:
            values["finished_at"] = _utc(event.at)
            values["error_message"] = event.reason
            values["return_value"] = event.return_value
            if since is not None:
                values["duration_secs"] = (event.at - since).total_seconds()
            started[key] = None
        conn.execute(_UPDATE_TASK, {"k_run": event.run_id, "k_task": event.task, **values})

    def runs(self, limit: int = 20, pipeline: str | None = None) -> list[RunSummary]:
        """The newest runs first, with their jobs counted by state: two queries, no pipeline snapshot."""
        query = select(runs.c.run_id, runs.c.pipeline, runs.c.state, runs.c.run_attempt, runs.c.started_at,
                       runs.c.finished_at, runs.c.scheduled_time).order_by(
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
            run_attempt=row["run_attempt"], started_at=_aware(row["started_at"]),
            finished_at=_aware(row["finished_at"]), scheduled_time=_aware(row["scheduled_time"]),
            task_counts=dict(counts[row["run_id"]]),
        ) for row in rows]

    def running_runs(self) -> list[RunRecord]:
        """Runs recorded as RUNNING: live ones, and any whose orchestrator died."""
        with self._engine.connect() as conn:
            query = select(runs).where(runs.c.state == RunState.RUNNING.value)
            return [_run_record(row) for row in conn.execute(query).mappings()]

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
        """Every job of a run as it stands now (its row of the latest graph run attempt that ran it), by name."""
        query = select(task_runs).where(task_runs.c.run_id == run_id, _LATEST).order_by(task_runs.c.task)
        with self._engine.connect() as conn:
            return [TaskRecord(
                task=row["task"], state=TaskState(row["state"]), attempts=row["attempts"], pool=row["pool"],
                image=row["image"], predecessors=tuple(json.loads(row["predecessors"])),
                is_finalizer=row["is_finalizer"], started_at=_aware(row["started_at"]),
                finished_at=_aware(row["finished_at"]), duration_secs=row["duration_secs"],
                return_value=row["return_value"], error_message=row["error_message"],
                run_attempt=row["run_attempt"],
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
                run_attempt=row["run_attempt"], runner=row["runner"], backend_ref=row["backend_ref"],
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
            return list(result.keys()), [tuple(_aware(v) if isinstance(v, datetime) else v for v in row)
                                         for row in result]


def migrate(engine: Engine, to: str = SCHEMA_VERSION, url: str | None = None) -> None:
    """Bring the store's schema to `to`, once, under the store's migration lock (see store/schema.py)."""
    migrate_to(engine, to, url)


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
