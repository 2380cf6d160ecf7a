"""One writer per run: who may write a run's records, and how that changes hands, atomically.

A run's `owner` column names the process that writes it (`host:pid:start-time`). It changes hands
only by a compare-and-set on what the new owner saw (an UPDATE whose WHERE names the state, the
attempt number and the owner it read; one row changed means it won), so that on SQLite and on
PostgreSQL alike, of any number of processes acting at once, exactly one does:

- `claim_run`: a retry takes a finished run for its next attempt (the others are told who has it), and
  clears the cancel request of the attempt that ended (store/cancel_requests.py);
- `release_claim`: a retry that stops before anything ran gives the run back as it was;
- `take_over` then `mark_lost`: recovery takes a run whose owner died, then closes its records.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, and_, exists, select, update

from jobgraph.owner import owner_is_gone
from jobgraph.states import TERMINAL_TASK_STATES, AttemptStatus, RunState, TaskState
from jobgraph.store.records import RunBusy as RunBusy
from jobgraph.store.records import RunRecord, TaskRecord, busy_reason
from jobgraph.store.tables import attempts, runs, task_runs


class RunOwnership:
    """The Store's methods that change who writes a run (a mixin: Store provides the engine and reads)."""

    _engine: Engine
    owner: str

    def run(self, run_id: str) -> RunRecord:
        """One run (the Store reads it)."""
        raise NotImplementedError

    def tasks(self, run_id: str) -> list[TaskRecord]:
        """A run's jobs as they stand (the Store reads them)."""
        raise NotImplementedError

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
                finished_at=None, cancel_requested_at=None, cancel_requested_by=None)).rowcount == 1
        if not won:
            raise RunBusy(busy_reason(self.run(seen.run_id)))
        return replace(seen, state=RunState.RUNNING, run_attempt=seen.run_attempt + 1, owner=self.owner,
                       finished_at=None, cancel_requested_at=None, cancel_requested_by=None)

    def release_claim(self, claimed: RunRecord, previous: RunRecord) -> bool:
        """Give back a claimed run as it was, if its new attempt recorded nothing (the retry stopped before it ran)."""
        recorded = [exists().where(and_(table.c.run_id == claimed.run_id,
                                        table.c.run_attempt == claimed.run_attempt))
                    for table in (task_runs, attempts)]
        with self._engine.begin() as conn:
            return bool(conn.execute(update(runs).where(and_(
                runs.c.run_id == claimed.run_id, runs.c.owner == self.owner,
                runs.c.state == RunState.RUNNING.value, runs.c.run_attempt == claimed.run_attempt,
                ~recorded[0], ~recorded[1])).values(
                state=previous.state.value, owner=previous.owner, run_attempt=previous.run_attempt,
                finished_at=previous.finished_at, cancel_requested_at=previous.cancel_requested_at,
                cancel_requested_by=previous.cancel_requested_by)).rowcount == 1)

    def take_over(self, lost: RunRecord) -> bool:
        """Become the owner of a RUNNING run whose owner died, to close it; False if another process did first."""
        with self._engine.begin() as conn:
            return bool(conn.execute(update(runs).where(and_(
                runs.c.run_id == lost.run_id, runs.c.state == RunState.RUNNING.value,
                runs.c.owner == lost.owner, runs.c.run_attempt == lost.run_attempt)).values(
                owner=self.owner)).rowcount == 1)

    def mark_lost(self, run_id: str, reason: str, keep: Collection[tuple[str, int]] = ()) -> bool:
        """Close the records of a run whose orchestrator died; False if it is not this process's to close.

        The run must be RUNNING and owned by this process (see `take_over`) or by a process that is
        gone. A job whose last attempt ended DONE succeeded (jobgraph died between recording the
        attempt and the job); every other unfinished attempt and job is CANCELLED, and so is the run,
        but the attempts in `keep` (job, attempt): remote ones still running, to be adopted.
        """
        run = self.run(run_id)
        mine = run.owner == self.owner or (run.owner is not None and owner_is_gone(run.owner))
        if run.state != RunState.RUNNING or not mine:
            return False
        at = datetime.now(UTC)
        unfinished = sorted(s.value for s in set(TaskState) - TERMINAL_TASK_STATES)
        with self._engine.begin() as conn:
            closed = conn.execute(update(runs).where(and_(
                runs.c.run_id == run.run_id, runs.c.state == RunState.RUNNING.value, runs.c.owner == run.owner,
                runs.c.run_attempt == run.run_attempt)).values(state=RunState.CANCELLED.value, finished_at=at))
            if closed.rowcount != 1:
                conn.rollback()
                return False
            running = conn.execute(select(attempts.c.id, attempts.c.task, attempts.c.attempt).where(and_(
                attempts.c.run_id == run.run_id, attempts.c.status == AttemptStatus.RUNNING.value))).all()
            closing = [row.id for row in running if (row.task, row.attempt) not in set(keep)]
            if closing:
                conn.execute(update(attempts).where(attempts.c.id.in_(closing)).values(
                    status=AttemptStatus.CANCELLED.value, error=reason, finished_at=at, created_date=at))
            last = _last_attempts(conn, run.run_id)
            open_rows = task_runs.c.run_id == run.run_id, task_runs.c.state.in_(unfinished)
            for task, started_at in conn.execute(select(task_runs.c.task, task_runs.c.started_at).where(*open_rows)):
                number, status, finished_at = last.get(task, (0, None, None))
                if status == AttemptStatus.DONE.value:
                    duration = (finished_at - started_at).total_seconds() if finished_at and started_at else None
                    conn.execute(update(task_runs).where(*open_rows, task_runs.c.task == task).values(
                        state=TaskState.SUCCEEDED.value, attempts=number, finished_at=finished_at,
                        duration_secs=duration, error_message=None))
            conn.execute(update(task_runs).where(*open_rows).values(
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
            number, status, _ = last.get(task.task, (0, None, None))
            if task.state != TaskState.SUCCEEDED and status == AttemptStatus.DONE.value:
                task = replace(task, state=TaskState.SUCCEEDED, attempts=number, error_message=None)
            settled.append(task)
        return settled


def _last_attempts(conn: Connection, run_id: str) -> dict[str, tuple[int, str | None, datetime | None]]:
    """Each job's last attempt: its number, status and end."""
    last: dict[str, tuple[int, str | None, datetime | None]] = {}
    rows = conn.execute(select(attempts.c.task, attempts.c.attempt, attempts.c.status, attempts.c.finished_at)
                        .where(attempts.c.run_id == run_id).order_by(attempts.c.attempt))
    for task, number, status, finished_at in rows:
        last[task] = (number, status, finished_at)
    return last
