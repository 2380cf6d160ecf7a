"""What each engine event writes in the store, once, for both ways of writing it.

`EventWriter.record_all` turns each event into named statements with bound parameters, in one
transaction; a subclass says what each name is in its own terms (store/sql_records.py: SQLAlchemy
Core constructs, for PostgreSQL and whatever else needs SQLAlchemy; store/sqlite_records.py:
constant SQL text for the standard library's sqlite3, the hot path of `jobgraph run` on SQLite).
Parameters are named after the columns they set (`k_...` for the keys a row is found by), and
times are aware UTC datetimes: the sqlite3 writer turns them into the text SQLAlchemy would store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

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
from jobgraph.states import TERMINAL_TASK_STATES, AttemptStatus, RunState, TaskState
from jobgraph.store.records import NotificationRecord, RunBusy, RunRecord, busy_reason, utc

Params = dict[str, Any]

TASK_CHANGE_COLUMNS = ("attempts", "started_at", "finished_at", "error_message", "return_value", "duration_secs")
"""The columns a job's change may set besides its state; the ones it leaves out keep their values."""


class EventWriter:
    """Records engine events; a subclass provides the transaction and runs the named statements."""

    owner: str
    """This process, as every run it writes records it."""

    def __init__(self) -> None:
        self._task_started: dict[tuple[str, str], datetime] = {}

    def _transaction(self) -> AbstractContextManager[None]:
        """One transaction around a batch: committed if the block ends normally, else rolled back (raising)."""
        raise NotImplementedError

    def _execute(self, name: str, params: Params) -> int:
        """Run the statement `name` with `params` in the transaction; the number of rows it changed."""
        raise NotImplementedError

    def _execute_many(self, name: str, rows: list[Params]) -> None:
        """Run the statement `name` once per row of parameters."""
        raise NotImplementedError

    def _select(self, name: str, params: Params) -> Iterator[tuple[Any, ...]]:
        """The rows of the query `name`."""
        raise NotImplementedError

    def _read_run(self, run_id: str) -> RunRecord:
        """One run as it stands in the transaction."""
        raise NotImplementedError

    def __call__(self, event: Event) -> None:
        """Record one engine event (see `record`): a writer is an engine listener."""
        self.record(event)

    def record(self, event: Event) -> None:
        """Record one engine event, in its own transaction (see `record_all`)."""
        self.record_all((event,))

    def record_all(self, events: Sequence[Event]) -> None:
        """Record engine events, in order, in one transaction: the engine hands over each wake-up's events at once.

        The statements are built once (module constants) and take their values as bound parameters,
        so a batch costs one commit and little more: this is the engine's hot path. A failure raises
        (a StoreFault for the store's own faults) and changes nothing, so the same events can be
        written again; `RunRecorder` does that.
        """
        started: dict[tuple[str, str], datetime | None] = {}  # what self._task_started becomes, once committed
        with self._transaction():
            for event in events:
                self._write(event, started)
        for key, at in started.items():
            if at is None:
                self._task_started.pop(key, None)
            else:
                self._task_started[key] = at

    def record_notification(self, record: NotificationRecord) -> None:
        """Record one notification's outcome, in a transaction of its own (app/notify.py writes it once it ended)."""
        with self._transaction():
            self._execute("insert_notification", {
                "run_id": record.run_id, "pipeline": record.pipeline, "event": record.event, "task": record.task,
                "target": record.target, "state": record.state, "tries": record.tries, "error": record.error,
                "created_at": utc(record.created_at),
                "finished_at": None if record.finished_at is None else utc(record.finished_at)})

    def _write(self, event: Event, started: dict[tuple[str, str], datetime | None]) -> None:
        """One event's statements, in the caller's transaction; `started` collects the jobs' start times."""
        if isinstance(event, RunStarted):
            self._run_started(event)
        elif isinstance(event, TaskChanged):
            self._task_changed(event, started)
        elif isinstance(event, AttemptStarted):
            self._execute("insert_attempt", {
                "k_run": event.run_id, "run_id": event.run_id, "task": event.task, "attempt": event.attempt,
                "status": AttemptStatus.RUNNING.value, "log_path": str(event.log_path),
                "started_at": utc(event.at), "created_date": utc(event.at)})
        elif isinstance(event, AttemptAdopted):
            self._execute("adopt_attempt", _attempt_key(event))
        elif isinstance(event, AttemptSubmitted):
            self._execute("submit_attempt", {**_attempt_key(event), "runner": event.runner,
                                             "backend_ref": event.reference})
        elif isinstance(event, AttemptEnded):
            self._execute("end_attempt", {
                **_attempt_key(event), "status": event.status.value, "exit_code": event.exit_code, "error": event.error,
                "finished_at": utc(event.at), "created_date": utc(event.at),
                "duration_secs": (event.at - event.started_at).total_seconds()})
        elif isinstance(event, RunEnded):
            ended = self._execute("end_run", {"k_run": event.run_id, "k_owner": self.owner,
                                              "state": event.state.value, "finished_at": utc(event.at)})
            if ended != 1:
                raise RunBusy(f"run {event.run_id} is no longer this process's to record: "
                              f"{busy_reason(self._read_run(event.run_id))}")

    def _run_started(self, event: RunStarted) -> None:
        """A graph run attempt begins: its jobs get new rows, and an earlier attempt's rows stay as they ended.

        On a retry (run_attempt > 1) the jobs that succeeded before (`resumed`) get no row: their
        row of the attempt they succeeded in stays their current one. The others start from the
        attempt count they reached, so attempt numbers go on across graph run attempts.
        """
        counts: dict[str, int] = {}
        if event.run_attempt > 1:
            # `claim_run` made this process the run's writer; this only checks that it still is.
            claimed = self._execute("check_claim", {
                "k_run": event.run_id, "k_owner": self.owner, "k_run_attempt": event.run_attempt,
                "k_state": RunState.RUNNING.value, "snapshot": event.snapshot, "pipeline_version": event.version,
                "selection": event.selection})
            if claimed != 1:
                raise RunBusy(f"run {event.run_id} was not claimed for attempt {event.run_attempt} by this "
                              f"process: {busy_reason(self._read_run(event.run_id))}")
            if event.resumed:  # a job whose last attempt ended DONE may still be recorded as unfinished
                self._execute_many("resume_succeeded", [{"k_run": event.run_id, "k_task": task}
                                                        for task in event.resumed])
            counts = {task: attempts for task, attempts in self._select("latest_attempts", {"k_run": event.run_id})}
        else:
            self._execute("insert_run", {
                "run_id": event.run_id, "pipeline": event.pipeline, "state": RunState.RUNNING.value,
                "run_attempt": event.run_attempt, "started_at": utc(event.at), "trigger": event.trigger,
                "pipeline_version": event.version, "scheduled_time": utc(event.scheduled_time),
                "snapshot": event.snapshot, "owner": self.owner, "selection": event.selection})
        resumed = set(event.resumed) | set(event.kept)  # kept as they were: their rows stay the current ones
        rows = [
            {"run_id": event.run_id, "task": t.name, "run_attempt": event.run_attempt,
             "state": TaskState.PENDING.value, "attempts": counts.get(t.name, 0), "pool": t.pool,
             "image": t.image, "predecessors": json.dumps(list(t.predecessors)), "is_finalizer": t.is_finalizer}
            for t in event.tasks if t.name not in resumed
        ]
        if rows:
            self._execute_many("insert_tasks", rows)

    def _task_changed(self, event: TaskChanged, started: dict[tuple[str, str], datetime | None]) -> None:
        """Write a job's new state and what changes with it (TASK_CHANGE_COLUMNS); note its start time in
        `started` (None: forget it), kept once committed."""
        key = (event.run_id, event.task)
        values: Params = {"state": event.state.value}
        since = started[key] if key in started else self._task_started.get(key)
        if event.attempt:
            values["attempts"] = event.attempt
        if event.state == TaskState.RUNNING and since is None:
            started[key] = event.at
            values["started_at"] = utc(event.at)
        if event.state in TERMINAL_TASK_STATES:
            values["finished_at"] = utc(event.at)
            values["error_message"] = event.reason
            values["return_value"] = event.return_value
            if since is not None:
                values["duration_secs"] = (event.at - since).total_seconds()
            started[key] = None
        self._execute("update_task", {"k_run": event.run_id, "k_task": event.task, **values})


def _attempt_key(event: AttemptAdopted | AttemptSubmitted | AttemptEnded) -> Params:
    """The parameters that find an event's attempt row."""
    return {"k_run": event.run_id, "k_task": event.task, "k_attempt": event.attempt}
