"""What the Prometheus metrics say, read from the store at scrape time: a few aggregate queries, no Prometheus here.

Reading the store (not counting in memory) means every process's runs count, whichever jobgraph ran
them (`run` in a terminal, `serve`, another `web`), and a restarted server loses nothing. Each
figure is one GROUP BY, each value put in its histogram bucket by the database, so a read returns
a few hundred rows however long the history is. What settled runs contribute never changes, so a
`MetricsReader` reads the whole history once, then at each scrape only the runs that started since
its edge (the oldest running run whose process is not known to be gone, at most SETTLE_SECS ago),
plus a cheap fingerprint of the settled runs (their count by state, from an index; the newest
attempts of a retry among them): a retry, a purge, a late record or a lost run closed among them
changes it, and the history is read again. jobgraph.web.metrics turns the result into metric families.

What each figure means, honestly, from what the store records:
- runs and jobs by state: as they stand now (a job's row of the latest graph run attempt that ran it);
- attempt durations: each ended attempt's `duration_secs`, by pipeline and how it ended;
- queue wait: the store records no time a job was queued, so a job's wait is measured from when it
  became ready (its last recorded predecessor's end, or its run's start if it has none) to the start
  of its first attempt: waiting for a pool slot plus jobgraph's own dispatch. First attempts of a
  run's first graph run attempt only (a retry's delay is not a wait, and a retried run's new start
  is not recorded); the finalizer, which waits for every job by design, is left out;
- scheduler lag: from a scheduled or triggered run's fire time (its `scheduled_time`, which is the
  `fires` row's) to the start of its first attempt;
- runner errors: attempts that ended ERROR (the runner could not start or follow the job), by the
  runner the engine gave them (`attempts.runner`; "unknown" for rows written before it was recorded).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Connection, Integer, and_, case, cast, exists, false, func, literal, select, true
from sqlalchemy.sql.elements import ColumnElement

from jobgraph.owner import owner_is_gone
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.records import aware, utc
from jobgraph.store.tables import attempts, runs, task_runs

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, math.inf)
"""Attempt durations, seconds: a no-op job to a six-hour one."""

QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, math.inf)
"""Queue waits, seconds: jobgraph's dispatch (milliseconds) to an hour behind a full pool."""

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, math.inf)
"""Scheduler lag, seconds: around the 50 ms target, and what a busy or down scheduler makes of it."""

DEFAULT_POOL = "default"
"""The pool label of a job recorded with no pool (the engine's default pool)."""

UNKNOWN_RUNNER = "unknown"
"""The runner label of an attempt recorded before attempts carried their runner."""

LAG_TRIGGERS = ("schedule", "trigger")
"""Runs with a fire time: the scheduler's own, and `trigger` requests (fired when the request was made)."""

SETTLE_SECS = 300.0
"""Runs that started this recently are always read afresh: a run recorded a little after its start time
(another process's batch, a store that was briefly down) is then never missed."""


@dataclass
class Histogram:
    """Cumulative counts of observations at or below each upper bound (the last is +Inf), and their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)

    @property
    def count(self) -> int:
        """How many observations (the +Inf bucket)."""
        return self.counts[-1]

    def observe(self, bucket: int, count: int, total: float) -> None:
        """Add `count` observations that fell in bucket number `bucket` (the first bound they are at or below)."""
        for at in range(bucket, len(self.counts)):
            self.counts[at] += count
        self.total += total

    def merged(self, other: Histogram) -> Histogram:
        """This histogram and another of the same bounds, added."""
        return Histogram(self.bounds, [a + b for a, b in zip(self.counts, other.counts, strict=True)],
                         self.total + other.total)


@dataclass
class Snapshot:
    """Everything one scrape shows, keyed by label values."""

    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    """(pipeline, state) -> runs."""
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    """(pipeline, state) -> jobs, as they stand now."""
    pool_jobs: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """(pipeline, pool, state) -> jobs QUEUED or RUNNING now."""
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    """(pipeline, status) -> ended attempts' durations."""
    runner_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    """(pipeline, runner) -> attempts that ended ERROR."""
    queue_waits: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    """(pipeline, pool) -> first attempts' waits from ready to started."""
    scheduler_lag: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    """(pipeline, trigger) -> fire time to first attempt start."""

    def merged(self, other: Snapshot) -> Snapshot:
        """The figures of two disjoint sets of runs, added."""
        total = Snapshot()
        for part in fields(Snapshot):
            mine: dict[Any, Any] = getattr(self, part.name)
            theirs: dict[Any, Any] = getattr(other, part.name)
            added = dict(mine)
            for key, value in theirs.items():
                added[key] = value if key not in added else (
                    added[key].merged(value) if isinstance(value, Histogram) else added[key] + value)
            setattr(total, part.name, added)
        return total


def _bucket(value: ColumnElement[Any], bounds: Sequence[float]) -> ColumnElement[Any]:
    """The number of the first bound `value` is at or below: one CASE per row, the counting is GROUP BY's."""
    finite = [bound for bound in bounds if bound != math.inf]
    return case(*((value <= literal(bound), at) for at, bound in enumerate(finite)), else_=len(finite))


def _observe(into: dict[Any, Histogram], key: Any, bounds: tuple[float, ...], bucket: int, count: int,
             total: float | None) -> None:
    into.setdefault(key, Histogram(bounds)).observe(int(bucket), int(count), float(total or 0.0))


def seconds_between(later: ColumnElement[Any], earlier: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """`later - earlier` in seconds, to the microsecond, computed by the database.

    PostgreSQL subtracts its timestamptz. SQLite keeps UTC text, always `YYYY-MM-DD HH:MM:SS.ffffff`
    (tables.py): the whole seconds by strftime('%s') of the text without its fraction, plus the
    microseconds' difference (SQLite's date functions keep only milliseconds, and round).
    """
    if dialect == "postgresql":
        return func.extract("epoch", later - earlier)
    whole = (cast(func.strftime("%s", func.substr(later, 1, 19)), Integer)  # the fraction cut first: SQLite
             - cast(func.strftime("%s", func.substr(earlier, 1, 19)), Integer))  # rounds .9995 s up to the next one
    micros = cast(func.substr(later, 21, 6), Integer) - cast(func.substr(earlier, 21, 6), Integer)
    return whole + micros / literal(1_000_000.0)


_LATER = task_runs.alias("later")
_CURRENT = ~exists().where(and_(_LATER.c.run_id == task_runs.c.run_id, _LATER.c.task == task_runs.c.task,
                                _LATER.c.run_attempt > task_runs.c.run_attempt))
"""A job's row of the latest graph run attempt that ran it (as app.queries reads a job's current state)."""


@dataclass(frozen=True)
class Span:
    """The runs that started at or after `low` and before `high` (None: no limit on that side)."""

    low: datetime | None = None
    high: datetime | None = None

    def where(self) -> list[ColumnElement[bool]]:
        """The conditions on `runs` that select these runs (bound parameters)."""
        found = []
        if self.low is not None:
            found.append(runs.c.started_at >= utc(self.low))
        if self.high is not None:
            found.append(runs.c.started_at < utc(self.high))
        return found

    def of(self, run_id: ColumnElement[Any]) -> ColumnElement[bool]:
        """The rows of another table (by its run_id) that belong to these runs: an IN over the started_at
        index, so the database reads only their rows (a join's condition on runs alone left SQLite scanning)."""
        if self.low is None and self.high is None:
            return true()
        return run_id.in_(select(runs.c.run_id).where(*self.where()))


def read(conn: Connection, span: Span = Span()) -> Snapshot:
    """Every figure of the runs in `span`, read from the store through `conn`."""
    found = Snapshot()
    dialect = conn.dialect.name
    for pipeline, state, count in conn.execute(select(runs.c.pipeline, runs.c.state, func.count())
                                               .where(*span.where()).group_by(runs.c.pipeline, runs.c.state)):
        found.runs[(pipeline, state)] = count
    _jobs(conn, found, span)
    _attempts(conn, found, span)
    _queue_waits(conn, found, span, dialect)
    _scheduler_lag(conn, found, span, dialect)
    return found


def snapshot(records: Store) -> Snapshot:
    """Every figure of the whole store, read now (MetricsReader reads only what changed)."""
    with records.engine.connect() as conn:
        return read(conn)


def _jobs(conn: Connection, found: Snapshot, span: Span) -> None:
    """Jobs by pipeline and state, and the QUEUED and RUNNING ones by pool too: one pass over the jobs."""
    # A run never retried has only rows of graph run attempt 1: those skip the probe for a later row.
    current = (runs.c.run_attempt == 1) | _CURRENT
    query = (select(runs.c.pipeline, task_runs.c.pool, task_runs.c.state, func.count())
             .select_from(runs.join(task_runs, task_runs.c.run_id == runs.c.run_id))
             .where(current, span.of(task_runs.c.run_id))
             .group_by(runs.c.pipeline, task_runs.c.pool, task_runs.c.state))
    busy = {TaskState.QUEUED.value, TaskState.RUNNING.value}
    for pipeline, pool, state, count in conn.execute(query):
        found.jobs[(pipeline, state)] = found.jobs.get((pipeline, state), 0) + count
        if state in busy:
            key = (pipeline, pool or DEFAULT_POOL, state)
            found.pool_jobs[key] = found.pool_jobs.get(key, 0) + count


def _attempts(conn: Connection, found: Snapshot, span: Span) -> None:
    """Ended attempts' durations by pipeline and status, and the ERROR ones by runner: one pass over the attempts."""
    runner = func.coalesce(attempts.c.runner, UNKNOWN_RUNNER)
    bucket = _bucket(attempts.c.duration_secs, DURATION_BUCKETS)
    query = (select(runs.c.pipeline, attempts.c.status, runner, bucket, func.count(),
                    func.sum(attempts.c.duration_secs))
             .select_from(runs.join(attempts, attempts.c.run_id == runs.c.run_id))
             .where(attempts.c.status != AttemptStatus.RUNNING.value, attempts.c.duration_secs.is_not(None),
                    span.of(attempts.c.run_id))
             .group_by(runs.c.pipeline, attempts.c.status, runner, bucket))
    for pipeline, status, runner_name, at, count, total in conn.execute(query):
        _observe(found.durations, (pipeline, status), DURATION_BUCKETS, at, count, total)
        if status == AttemptStatus.ERROR.value:
            key = (pipeline, runner_name)
            found.runner_errors[key] = found.runner_errors.get(key, 0) + count


def _edges(dialect: str) -> Any:
    """A job's predecessors (task_runs.predecessors, a JSON list of names) as rows: the database's JSON function."""
    if dialect == "postgresql":
        return func.json_array_elements_text(cast(task_runs.c.predecessors, JSON)).table_valued("value").lateral()
    return func.json_each(task_runs.c.predecessors).table_valued("value")


def _queue_waits(conn: Connection, found: Snapshot, span: Span, dialect: str) -> None:
    """Each first attempt's wait from its job's ready time, by pipeline and pool (see the module's docstring)."""
    first = attempts.alias("first")
    before = task_runs.alias("before")
    edge = _edges(dialect)
    ready = (select(runs.c.pipeline, task_runs.c.pool, first.c.started_at.label("began"),
                    func.coalesce(func.max(before.c.finished_at), runs.c.started_at).label("ready_at"))
             .select_from(runs.join(task_runs, task_runs.c.run_id == runs.c.run_id)
                          .join(first, and_(first.c.run_id == task_runs.c.run_id, first.c.task == task_runs.c.task,
                                            first.c.attempt == 1))
                          .outerjoin(edge, true())
                          .outerjoin(before, and_(before.c.run_id == task_runs.c.run_id, before.c.task == edge.c.value,
                                                  before.c.run_attempt == 1)))
             # attempts > 0: the job started in its run's first attempt (one skipped then, run by a retry, did not)
             .where(task_runs.c.run_attempt == 1, task_runs.c.attempts > 0, task_runs.c.is_finalizer == false(),
                    span.of(task_runs.c.run_id))
             .group_by(task_runs.c.run_id, task_runs.c.task, runs.c.pipeline, task_runs.c.pool, first.c.started_at,
                       runs.c.started_at)
             .subquery("ready"))
    waited = seconds_between(ready.c.began, ready.c.ready_at, dialect)
    waits = select(ready.c.pipeline, ready.c.pool, case((waited < 0, 0.0), else_=waited).label("wait")).subquery("w")
    bucket = _bucket(waits.c.wait, QUEUE_BUCKETS)
    query = (select(waits.c.pipeline, waits.c.pool, bucket, func.count(), func.sum(waits.c.wait))
             .group_by(waits.c.pipeline, waits.c.pool, bucket))
    for pipeline, pool, at, count, total in conn.execute(query):
        _observe(found.queue_waits, (pipeline, pool or DEFAULT_POOL), QUEUE_BUCKETS, at, count, total)


def _scheduler_lag(conn: Connection, found: Snapshot, span: Span, dialect: str) -> None:
    """Fire time to first attempt start of each scheduled or triggered run that has started a job."""
    fired = select(runs.c.run_id).where(runs.c.trigger.in_(LAG_TRIGGERS), *span.where())
    first = (select(attempts.c.run_id, func.min(attempts.c.started_at).label("began"))
             .where(attempts.c.run_id.in_(fired)).group_by(attempts.c.run_id).subquery("began"))
    lagged = seconds_between(first.c.began, runs.c.scheduled_time, dialect)
    lags = (select(runs.c.pipeline, runs.c.trigger, case((lagged < 0, 0.0), else_=lagged).label("lag"))
            .select_from(runs.join(first, first.c.run_id == runs.c.run_id)).subquery("lags"))
    bucket = _bucket(lags.c.lag, LAG_BUCKETS)
    query = (select(lags.c.pipeline, lags.c.trigger, bucket, func.count(), func.sum(lags.c.lag))
             .group_by(lags.c.pipeline, lags.c.trigger, bucket))
    for pipeline, trigger, at, count, total in conn.execute(query):
        _observe(found.scheduler_lag, (pipeline, trigger), LAG_BUCKETS, at, count, total)


class MetricsReader:
    """The store's figures at each scrape, reading the settled past once (see the module's docstring).

    Thread-safe: scrapes that come at once read one after the other.
    """

    def __init__(self, records: Store, settle_secs: float = SETTLE_SECS) -> None:
        self.records = records
        self.settle = timedelta(seconds=settle_secs)
        self.settled = Snapshot()
        """The figures of every run that started before `edge`."""
        self.edge: datetime | None = None
        """Runs that started before this had all ended when they were read (None: nothing read yet)."""
        self.fingerprint: tuple[Any, ...] = ()
        self.since = 0
        """Attempts numbered above this are looked at for a retry of a settled run."""
        self.full_reads = 0
        """How many times the whole history was read (once, then after each change to the settled past)."""
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        """Every figure of the store now."""
        with self._lock, self.records.engine.connect() as conn:
            top = conn.execute(select(func.max(attempts.c.id))).scalar() or 0
            edge = datetime.now(UTC) - self.settle
            for started_at, owner in conn.execute(select(runs.c.started_at, runs.c.owner)
                                                  .where(runs.c.state == RunState.RUNNING.value)):
                if not (owner and owner_is_gone(owner)):  # a lost run must not hold the edge back until it is closed
                    edge = min(edge, aware(started_at))
            if self.edge is not None and (edge < self.edge or
                                          _fingerprint(conn, self.edge, self.since) != self.fingerprint):
                self.settled, self.edge = Snapshot(), None  # a settled run changed (retried, purged, recorded late)
            if self.edge is None or edge > self.edge:
                if self.edge is None:
                    self.full_reads += 1
                since = max(0, top - RECHECK_ATTEMPTS)
                fingerprint = _fingerprint(conn, edge, since)  # before the runs it covers: a change shows next time
                self.settled = self.settled.merged(read(conn, Span(self.edge, edge)))
                self.edge, self.fingerprint, self.since = edge, fingerprint, since
            return self.settled.merged(read(conn, Span(self.edge)))


RECHECK_ATTEMPTS = 1_000
"""How many of the latest attempts are looked at for a retry of a settled run: ids are given out in order, but
PostgreSQL may commit them out of order, so a few before the newest the reader saw are looked at again."""


def _fingerprint(conn: Connection, edge: datetime, since: int) -> tuple[Any, ...]:
    """What changes when the runs that started before `edge` change: their count by state (an index's entries:
    a run added late, purged, or ended otherwise after a retry), and the attempts numbered above `since` of
    their later graph run attempts (a retry that began and ended between two scrapes)."""
    before = runs.c.started_at < utc(edge)
    states = conn.execute(select(runs.c.state, func.count()).where(before).group_by(runs.c.state)
                          .order_by(runs.c.state)).all()
    retried = conn.execute(select(attempts.c.id).select_from(attempts.join(runs, runs.c.run_id == attempts.c.run_id))
                           .where(attempts.c.id > since, attempts.c.run_attempt > 1, before)
                           .order_by(attempts.c.id)).scalars().all()
    return tuple(tuple(row) for row in states), tuple(retried)
