"""A SQLite store through the standard library's sqlite3: what `jobgraph run` needs, without SQLAlchemy.

Importing SQLAlchemy alone costs a run about 0.2 s. On a SQLite store `Store` (store.py) opens,
creates and writes through this module: the version check (a new store is made from the schema
snapshot, store/sqlite_schema.py), every engine event (store/writer.py says what each writes; here
each statement is constant SQL text with bound parameters), and the reads a run makes (runs left
RUNNING, for recovery; a run's jobs, for the closing summary). Values are stored exactly as
SQLAlchemy stores them (times as UTC text, booleans as 0/1), so either way reads what the other
wrote; the store's faults are the same StoreFaults (store/faults.py).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Collection, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from jobgraph.errors import StoreError
from jobgraph.states import RunState
from jobgraph.store.faults import fault_of
from jobgraph.store.records import RunRecord, TaskRecord, run_record, sqlite_text, task_record
from jobgraph.store.sqlite_schema import SQLITE_SCHEMA_VERSION, create_schema
from jobgraph.store.writer import TASK_CHANGE_COLUMNS, EventWriter, Params

SQLITE_PRAGMAS = ("PRAGMA busy_timeout=10000", "PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL",
                  "PRAGMA foreign_keys=ON")
"""Run on each new connection, by either way of opening the store (see `sqlite_pragmas`)."""

_RUN_ATTEMPT = "(SELECT run_attempt FROM runs WHERE run_id = :k_run)"
"""The graph run attempt now running: an event's job and attempt rows belong to it."""

_LATEST = ("NOT EXISTS (SELECT 1 FROM task_runs AS later WHERE later.run_id = task_runs.run_id"
           " AND later.task = task_runs.task AND later.run_attempt > task_runs.run_attempt)")
"""A job's row of the latest graph run attempt that ran it: its current state."""

_THE_ATTEMPT = " WHERE run_id = :k_run AND task = :k_task AND attempt = :k_attempt"

_STATEMENTS = {
    "insert_run": (
        'INSERT INTO runs (run_id, pipeline, state, run_attempt, started_at, scheduled_time, snapshot, owner, '
        '"trigger", pipeline_version, selection) VALUES (:run_id, :pipeline, :state, :run_attempt, :started_at, '
        ':scheduled_time, :snapshot, :owner, :trigger, :pipeline_version, :selection)'),
    "insert_tasks": (
        "INSERT INTO task_runs (run_id, task, run_attempt, state, attempts, pool, image, predecessors, is_finalizer) "
        "VALUES (:run_id, :task, :run_attempt, :state, :attempts, :pool, :image, :predecessors, :is_finalizer)"),
    "check_claim": (
        "UPDATE runs SET snapshot = :snapshot, pipeline_version = :pipeline_version, selection = :selection "
        "WHERE run_id = :k_run "
        "AND owner = :k_owner AND run_attempt = :k_run_attempt AND state = :k_state"),
    "resume_succeeded": (
        "UPDATE task_runs SET state = 'SUCCEEDED', error_message = NULL WHERE run_id = :k_run AND task = :k_task "
        "AND state != 'SUCCEEDED' AND " + _LATEST),
    "latest_attempts": "SELECT task, attempts FROM task_runs WHERE run_id = :k_run AND " + _LATEST,
    "insert_attempt": (
        "INSERT INTO attempts (run_id, task, attempt, run_attempt, status, log_path, started_at, created_date) "
        "VALUES (:run_id, :task, :attempt, " + _RUN_ATTEMPT + ", :status, :log_path, :started_at, :created_date)"),
    "adopt_attempt": "UPDATE attempts SET run_attempt = " + _RUN_ATTEMPT + _THE_ATTEMPT,
    "submit_attempt": "UPDATE attempts SET runner = :runner, backend_ref = :backend_ref" + _THE_ATTEMPT,
    "end_attempt": (
        "UPDATE attempts SET status = :status, exit_code = :exit_code, error = :error, finished_at = :finished_at, "
        "created_date = :created_date, duration_secs = :duration_secs" + _THE_ATTEMPT),
    "end_run": "UPDATE runs SET state = :state, finished_at = :finished_at WHERE run_id = :k_run AND owner = :k_owner",
    "update_task": (  # each column of TASK_CHANGE_COLUMNS is set only when the change names it (set_...)
        "UPDATE task_runs SET state = :state, "
        "attempts = CASE WHEN :set_attempts THEN :attempts ELSE attempts END, "
        "started_at = CASE WHEN :set_started_at THEN :started_at ELSE started_at END, "
        "finished_at = CASE WHEN :set_finished_at THEN :finished_at ELSE finished_at END, "
        "error_message = CASE WHEN :set_error_message THEN :error_message ELSE error_message END, "
        "return_value = CASE WHEN :set_return_value THEN :return_value ELSE return_value END, "
        "duration_secs = CASE WHEN :set_duration_secs THEN :duration_secs ELSE duration_secs END "
        "WHERE run_id = :k_run AND task = :k_task AND run_attempt = " + _RUN_ATTEMPT),
    "insert_notification": (
        "INSERT INTO notifications (run_id, pipeline, event, task, target, state, tries, error, created_at, "
        "finished_at) VALUES (:run_id, :pipeline, :event, :task, :target, :state, :tries, :error, :created_at, "
        ":finished_at)"),
    "read_run": "SELECT * FROM runs WHERE run_id = :k_run",
    "running_runs": "SELECT * FROM runs WHERE state = :k_state",
    "tasks": "SELECT * FROM task_runs WHERE run_id = :k_run AND " + _LATEST + " ORDER BY task",
    "cancel_requests": (  # store/cancel_requests.py's CANCEL_REQUESTS; the run ids come as one JSON array
        "SELECT run_id, cancel_requested_by FROM runs WHERE run_id IN (SELECT value FROM json_each(:k_runs)) "
        "AND cancel_requested_at IS NOT NULL AND state = 'RUNNING'"),
}
"""What each of store/writer.py's statements is, and the reads of a run, as constant SQL text."""


def sqlite_pragmas(connection: Any) -> None:
    """WAL lets readers (history, the web page) read while a run writes; NORMAL sync is safe in WAL.

    The busy timeout comes first: switching a new file to WAL takes a lock that other processes
    opening the same new store at the same moment must wait for, not fail on.
    """
    cursor = connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store URL, its folder made; None for any other store (in memory, with options)."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:" or "?" in url:
        return None
    path = Path(url.removeprefix("sqlite:///"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the store's folder for {url!r}: {exc.strerror}") from None
    return path


class SqliteRecords(EventWriter):
    """One connection to a SQLite store that records runs; `current` is False when the store needs migrating."""

    def __init__(self, path: Path, owner: str) -> None:
        super().__init__()
        self.owner = owner
        self._name = str(path)
        with self._guard():
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        try:
            with self._guard():
                sqlite_pragmas(self._db)
                self.current = self._prepare()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def _prepare(self) -> bool:
        """Make a new store from the schema snapshot, under the write lock; True if the store is at that schema."""
        if self._version() is None:
            with self._transaction():
                if self._version() is None:  # another process may have made it while this one waited
                    create_schema(self._db.execute)
        return self._version() == SQLITE_SCHEMA_VERSION

    def _version(self) -> str | None:
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
                            ).fetchone() is None:
            return None
        row = self._db.execute("SELECT version_num FROM alembic_version").fetchone()
        return None if row is None else str(row[0])

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn the store's own failures (sqlite3 errors but a refused record's) into StoreFaults."""
        try:
            yield
        except sqlite3.Error as exc:
            fault = fault_of(exc, self._name)
            if fault is None:
                raise
            raise fault from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    def _execute(self, name: str, params: Params) -> int:
        if name == "update_task":
            params = {**params, **{f"set_{column}": column in params for column in TASK_CHANGE_COLUMNS},
                      **{column: params.get(column) for column in TASK_CHANGE_COLUMNS}}
        return self._db.execute(_STATEMENTS[name], _bound(params)).rowcount

    def _execute_many(self, name: str, rows: list[Params]) -> None:
        self._db.executemany(_STATEMENTS[name], [_bound(row) for row in rows])

    def _select(self, name: str, params: Params) -> Iterator[tuple[Any, ...]]:
        return iter(self._db.execute(_STATEMENTS[name], params).fetchall())

    def _read_run(self, run_id: str) -> RunRecord:
        row = self._db.execute(_STATEMENTS["read_run"], {"k_run": run_id}).fetchone()
        if row is None:
            raise StoreError(f"no run with id {run_id!r}")
        return run_record(row)

    def running_runs(self) -> list[RunRecord]:
        """Runs recorded as RUNNING: live ones, and any whose orchestrator died."""
        with self._guard():
            rows = self._db.execute(_STATEMENTS["running_runs"], {"k_state": RunState.RUNNING.value}).fetchall()
        return [run_record(row) for row in rows]

    def tasks(self, run_id: str) -> list[TaskRecord]:
        """Every job of a run as it stands now (its row of the latest graph run attempt that ran it), by name."""
        with self._guard():
            rows = self._db.execute(_STATEMENTS["tasks"], {"k_run": run_id}).fetchall()
        return [task_record(row) for row in rows]

    def cancel_requests(self, run_ids: Collection[str]) -> dict[str, str]:
        """Of these runs, those still RUNNING whose cancel someone asked for, with who asked: the owner's poll."""
        with self._guard():
            rows = self._db.execute(_STATEMENTS["cancel_requests"], {"k_runs": json.dumps(list(run_ids))}).fetchall()
        return {run_id: by for run_id, by in rows}


def _bound(params: Params) -> Params:
    """The parameters as SQLAlchemy would bind them on SQLite: times as UTC text."""
    return {key: sqlite_text(value) if isinstance(value, datetime) else value for key, value in params.items()}
