"""Cancel requests: another process asks, through the store, that a run be cancelled; its owner does it.

Only the process that runs a run (its `owner`) can stop its jobs and record how they ended, so any
other process (`jobgraph cancel`, the web page) never signals it: it records a request on the run's
row, and the owner reads the requests for its own runs at each poll (`cancel_requests`, primary-key
lookups) and cancels as Ctrl-C would. The request is a compare-and-set on the attempt the requester
saw running, so it never lands on a run that ended meanwhile nor on a later attempt (a retry), and of
several requests at once exactly one is recorded. A retry's claim clears it (ownership.py): it was for
the attempt that ended. The poll of a SQLite store through the standard library is in
sqlite_records.py, as the same query in SQL text.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from sqlalchemy import Engine, and_, bindparam, select, update

from jobgraph.errors import StoreError
from jobgraph.states import RunState
from jobgraph.store.records import RunRecord
from jobgraph.store.tables import runs

CANCEL_REQUESTS = select(runs.c.run_id, runs.c.cancel_requested_by).where(
    runs.c.run_id.in_(bindparam("k_runs", expanding=True)), runs.c.cancel_requested_at.is_not(None),
    runs.c.state == RunState.RUNNING.value)
"""Of the runs named, those still RUNNING whose cancel was requested, and by whom."""


class CancelRequests:
    """The Store's methods for cancel requests (a mixin: the Store provides the engine and reads)."""

    _engine: Engine

    def run(self, run_id: str) -> RunRecord:
        """One run (the Store reads it)."""
        raise NotImplementedError

    def request_cancel(self, run_id: str, by: str) -> RunRecord:
        """Record that `by` asks to cancel the run (its id or a unique prefix); return the run as it stands then.

        Only a RUNNING run takes a request, and only its first: a later request changes nothing and
        gets the run with the first one. A run that has ended raises StoreError saying how it ended.
        """
        seen = self.run(run_id)
        if seen.state == RunState.RUNNING:
            with self._engine.begin() as conn:
                conn.execute(update(runs).where(and_(
                    runs.c.run_id == seen.run_id, runs.c.state == RunState.RUNNING.value,
                    runs.c.run_attempt == seen.run_attempt, runs.c.cancel_requested_at.is_(None))).values(
                    cancel_requested_at=datetime.now(UTC), cancel_requested_by=by[:300]))  # the column's size
        now = self.run(seen.run_id)
        if now.state != RunState.RUNNING or now.run_attempt != seen.run_attempt:
            raise StoreError(f"{ended(now if now.run_attempt == seen.run_attempt else seen)}; nothing was cancelled")
        return now

    def cancel_requests(self, run_ids: Collection[str]) -> dict[str, str]:
        """Of these runs, those still RUNNING whose cancel someone asked for, with who asked: the owner's poll."""
        with self._engine.connect() as conn:
            return {run_id: by for run_id, by in conn.execute(CANCEL_REQUESTS, {"k_runs": list(run_ids)})}


def ended(run: RunRecord) -> str:
    """How a run that is not running ended, said so that the user sees there is nothing left to cancel."""
    if run.state == RunState.RUNNING:  # seen running, then it ended and a retry took it meanwhile
        return f"run {run.run_id} attempt {run.run_attempt} ended meanwhile"
    when = f" at {run.finished_at:%Y-%m-%d %H:%M:%S} UTC" if run.finished_at else ""
    how = f" (cancel requested by {run.cancel_requested_by})" if run.cancel_requested_by else ""
    return f"run {run.run_id} of {run.pipeline} has already ended: {run.state}{when}{how}"
