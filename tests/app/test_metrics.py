"""The metrics' figures (app/metrics.py) say what the store's records say, on both backends, and the reader that
reads only what changed gives what a full read gives, after a retry, a purge or a run recorded late.

Each expected figure is computed here in Python from the store's own records (Store.runs/tasks/attempts,
the task_runs rows of graph run attempt 1), never by the SQL under test.
"""

from __future__ import annotations

import json
import math
import socket
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from jobgraph.app import metrics
from jobgraph.engine import AttemptEnded, AttemptStarted, RunEnded, RunStarted, TaskChanged, TaskInfo
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.records import aware
from jobgraph.store.tables import task_runs
from tests.conftest import Cli, WritePipeline, sh

TOLERANCE = 1e-5
"""Seconds: the store keeps microseconds, and each backend computes a wait to the microsecond (a float's last
digits aside)."""


@dataclass
class Expected:
    """The figures as the store's records give them, values kept whole (not bucketed)."""

    runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    jobs: Counter[tuple[str, str]] = field(default_factory=Counter)
    pool_jobs: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    durations: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    runner_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    queue_waits: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    scheduler_lag: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))


def expected(url: str) -> Expected:
    """Every figure, from the records."""
    found = Expected()
    with Store(url) as records:
        for run in records.runs(10_000):
            found.runs[(run.pipeline, run.state)] += 1
            full = records.run(run.run_id)
            for task in records.tasks(run.run_id):
                found.jobs[(run.pipeline, task.state)] += 1
                if task.state in (TaskState.QUEUED, TaskState.RUNNING):
                    found.pool_jobs[(run.pipeline, task.pool or "default", task.state)] += 1
            tried = records.attempts(run.run_id)
            for attempt in tried:
                if attempt.status != AttemptStatus.RUNNING and attempt.duration_secs is not None:
                    found.durations[(run.pipeline, attempt.status)].append(attempt.duration_secs)
                if attempt.status == AttemptStatus.ERROR:
                    found.runner_errors[(run.pipeline, attempt.runner or "unknown")] += 1
            if tried and full.trigger in ("schedule", "trigger"):
                first = min(aware(a.started_at) for a in tried)
                found.scheduler_lag[(run.pipeline, full.trigger)].append(
                    max(0.0, (first - aware(records_scheduled(records, run.run_id))).total_seconds()))
            firsts = {a.task: aware(a.started_at) for a in tried if a.attempt == 1 and a.run_attempt == 1}
            with records.engine.connect() as conn:
                rows = conn.execute(select(task_runs).where(task_runs.c.run_id == run.run_id,
                                                            task_runs.c.run_attempt == 1)).mappings().all()
            ended = {row["task"]: aware(row["finished_at"]) for row in rows if row["finished_at"] is not None}
            for row in rows:
                if row["is_finalizer"] or row["task"] not in firsts:
                    continue
                before = [ended[name] for name in json.loads(row["predecessors"]) if name in ended]
                ready = max(before) if before else aware(full.started_at)
                found.queue_waits[(run.pipeline, row["pool"] or "default")].append(
                    max(0.0, (firsts[row["task"]] - ready).total_seconds()))
    return found


def records_scheduled(records: Store, run_id: str) -> datetime:
    """A run's fire time as stored (runs.scheduled_time)."""
    from jobgraph.store.tables import runs

    with records.engine.connect() as conn:
        value: datetime = conn.execute(select(runs.c.scheduled_time).where(runs.c.run_id == run_id)).scalar_one()
    return value


def assert_histogram(histogram: metrics.Histogram | None, values: Sequence[float], bounds: tuple[float, ...]) -> None:
    """Counts exact; the sum within the store's precision; each bucket exact unless a value sits on its bound."""
    assert histogram is not None, values
    assert histogram.bounds == bounds
    assert histogram.count == len(values)
    assert math.isclose(histogram.total, sum(values), abs_tol=TOLERANCE * max(1, len(values))), (histogram, values)
    for bound, count in zip(bounds, histogram.counts, strict=True):
        if any(abs(value - bound) <= TOLERANCE for value in values):
            continue
        assert count == sum(1 for value in values if value <= bound), (bound, histogram, values)


def assert_matches(found: metrics.Snapshot, wanted: Expected) -> None:
    """A snapshot says what the records say."""
    assert found.runs == dict(wanted.runs)
    assert found.jobs == dict(wanted.jobs)
    assert found.pool_jobs == dict(wanted.pool_jobs)
    assert found.runner_errors == dict(wanted.runner_errors)
    for name, bounds in (("durations", metrics.DURATION_BUCKETS), ("queue_waits", metrics.QUEUE_BUCKETS),
                         ("scheduler_lag", metrics.LAG_BUCKETS)):
        histograms: dict[tuple[str, str], metrics.Histogram] = getattr(found, name)
        values: dict[tuple[str, str], list[float]] = getattr(wanted, name)
        assert set(histograms) == set(values), name
        for key, observed in values.items():
            assert_histogram(histograms[key], observed, bounds)


SHOP = {
    "name": "shop",
    "images": {"sh": ["sh", "-c"], "ghost": ["/nonexistent/jobgraph-metrics-test"]},
    "pools": {"solo": {"max_parallel": 1}},
    "jobs": [sh("first", "sleep 0.3", pool="solo"), sh("second", "sleep 0.3", pool="solo"),
             sh("broken", "exit 3", after=["first"], retries=1), {"name": "missing", "image": "ghost"},
             sh("after_both", "echo done", after=["first", "second"])],
}
"""Two jobs that share a pool of one (one waits for the other), a failure retried, a command that cannot start
(an ERROR of the local runner), a job waiting for two predecessors."""


def test_the_figures_are_the_records_on_both_backends(any_store_url: str, cli: Cli,
                                                      write_pipeline: WritePipeline) -> None:
    path = write_pipeline(SHOP, with_sh=False)
    cli("run", str(path), "--store", any_store_url, check=1)
    cli("deploy", str(path), "--store", any_store_url, check=0)
    cli("trigger", "shop", "--store", any_store_url, check=1)  # no service: run here, as a triggered run
    wanted = expected(any_store_url)
    assert wanted.runs == {("shop", "FAILED"): 2}
    assert wanted.runner_errors == {("shop", "local"): 2}
    assert sorted(len(v) for v in wanted.queue_waits.values()) == [4, 6]  # first, second | broken, missing, after_both
    assert max(wanted.queue_waits[("shop", "solo")]) >= 0.25  # the one that waited for the other's slot
    assert len(wanted.scheduler_lag[("shop", "trigger")]) == 1
    with Store(any_store_url) as records:
        assert_matches(metrics.snapshot(records), wanted)
        reader = metrics.MetricsReader(records, settle_secs=0)
        assert_matches(reader.snapshot(), wanted)
        assert_matches(reader.snapshot(), wanted)
        assert reader.full_reads == 1


def _late_run(url: str, at: datetime, log: Path) -> str:
    """A run recorded now that started at `at` (another process's records arriving late): one job, DONE."""
    run_id = str(uuid.uuid4())
    events = [RunStarted(run_id, "late", at, at, (TaskInfo("only", "", "sh", ()),), "{}", trigger="schedule"),
              TaskChanged(run_id, "only", TaskState.RUNNING, at + timedelta(seconds=1), attempt=1),
              AttemptStarted(run_id, "only", 1, at + timedelta(seconds=1), log, "slurm"),
              AttemptEnded(run_id, "only", 1, AttemptStatus.ERROR, at + timedelta(seconds=1),
                           at + timedelta(seconds=3), None, "sbatch refused it", log),
              TaskChanged(run_id, "only", TaskState.FAILED, at + timedelta(seconds=3), attempt=1, reason="no"),
              RunEnded(run_id, RunState.FAILED, at + timedelta(seconds=4))]
    with Store(url) as store:
        store.record_all(events)
    return run_id


def test_the_reader_reads_the_past_again_when_it_changes(any_store_url: str, cli: Cli,
                                                          write_pipeline: WritePipeline, tmp_path: Path) -> None:
    path = write_pipeline({"name": "flaky", "jobs": [sh("ok", "echo ok"), sh("bad", "exit 1", after=["ok"]),
                                                     sh("later", "echo later", after=["bad"])]})
    cli("run", str(path), "--store", any_store_url, check=1)
    cli("run", str(path), "--store", any_store_url, check=1)
    with Store(any_store_url) as records:
        reader = metrics.MetricsReader(records, settle_secs=0)
        assert_matches(reader.snapshot(), expected(any_store_url))
        run_id, other = (run.run_id for run in records.runs(2))
        cli("retry", other, "--store", any_store_url, check=1)  # fails again: only its attempts change
        again = expected(any_store_url)
        assert again.runs == {("flaky", "FAILED"): 2} and len(again.durations[("flaky", "FAILED")]) == 3
        assert_matches(reader.snapshot(), again)
        assert reader.full_reads == 2
        fixed = write_pipeline({"name": "flaky", "jobs": [sh("ok", "echo ok"), sh("bad", "echo fixed", after=["ok"]),
                                                          sh("later", "echo later", after=["bad"])]},
                               name="fixed.yaml")  # `later`, skipped before, now runs its attempt 1: no wait of it
        cli("retry", run_id, "--file", str(fixed), "--store", any_store_url, check=0)  # a settled run changes
        after_retry = expected(any_store_url)
        assert after_retry.runs == {("flaky", "FAILED"): 1, ("flaky", "SUCCEEDED"): 1}
        assert_matches(reader.snapshot(), after_retry)
        assert reader.full_reads == 3
        _late_run(any_store_url, datetime.now(UTC) - timedelta(hours=5), tmp_path / "late.log")
        late = expected(any_store_url)
        assert late.runner_errors == {("late", "slurm"): 1} and len(late.scheduler_lag[("late", "schedule")]) == 1
        assert math.isclose(late.scheduler_lag[("late", "schedule")][0], 1.0, abs_tol=TOLERANCE)
        assert_matches(reader.snapshot(), late)
        assert reader.full_reads == 4
        cli("deploy", str(path), "--store", any_store_url, check=0)
        cli("drop", "flaky", "--purge", "--store", any_store_url, check=0)
        purged = expected(any_store_url)
        assert set(purged.runs) == {("late", "FAILED")}
        assert_matches(reader.snapshot(), purged)
        cli("run", str(path), "--store", any_store_url, check=1)  # new runs only: the past is not read again
        assert_matches(reader.snapshot(), expected(any_store_url))
        assert reader.full_reads == 5


def test_lags_and_waits_are_exact_to_the_microsecond_on_both_backends(any_store_url: str, tmp_path: Path) -> None:
    """SQLite's date functions keep milliseconds and round (0.9995 s after a second is the next second): a lag
    of 0.9995 s must stay below 1 s, one of exactly 0.05 s in the 0.05 bucket, one of 0.049999 s too."""
    fire = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    for lag in (0.9995, 0.05, 0.049999):
        run_id, began = str(uuid.uuid4()), fire + timedelta(seconds=lag)
        with Store(any_store_url) as store:
            store.record_all([RunStarted(run_id, "exact", fire, fire, (TaskInfo("a", "", "sh", ()),), "{}",
                                         trigger="schedule"),
                              TaskChanged(run_id, "a", TaskState.RUNNING, began, attempt=1),
                              AttemptStarted(run_id, "a", 1, began, tmp_path / "a.log", "local"),
                              AttemptEnded(run_id, "a", 1, AttemptStatus.DONE, began, began, 0, None,
                                           tmp_path / "a.log"),
                              TaskChanged(run_id, "a", TaskState.SUCCEEDED, began, attempt=1),
                              RunEnded(run_id, RunState.SUCCEEDED, began)])
    with Store(any_store_url) as records:
        found = metrics.snapshot(records)
    lag = found.scheduler_lag[("exact", "schedule")]
    assert dict(zip(metrics.LAG_BUCKETS, lag.counts, strict=True))[0.05] == 2
    assert dict(zip(metrics.LAG_BUCKETS, lag.counts, strict=True))[1.0] == 3
    assert math.isclose(lag.total, 0.9995 + 0.05 + 0.049999, abs_tol=1e-9)
    waits = found.queue_waits[("exact", "default")]  # the job was ready at its run's start, the fire time
    assert dict(zip(metrics.QUEUE_BUCKETS, waits.counts, strict=True))[0.05] == 2
    assert dict(zip(metrics.QUEUE_BUCKETS, waits.counts, strict=True))[1.0] == 3
    assert math.isclose(waits.total, lag.total, abs_tol=1e-9)
    assert_matches(found, expected(any_store_url))


def test_a_lost_run_does_not_hold_the_reader_back_and_is_counted_again_once_closed(any_store_url: str,
                                                                                  tmp_path: Path) -> None:
    """A run left RUNNING by a jobgraph killed with -9 would keep every later run unsettled (read at each scrape)
    until something closes it: the reader settles past it, and reads the history again when it is closed."""
    at = datetime.now(UTC) - timedelta(hours=2)
    run_id, log = str(uuid.uuid4()), tmp_path / "a.log"
    with Store(any_store_url) as store:
        store.owner = f"{socket.gethostname()}:{2**22 + 4321}:0"  # a process of this host that is not alive
        store.record_all([RunStarted(run_id, "lost", at, at, (TaskInfo("a", "", "sh", ()),), "{}"),
                          TaskChanged(run_id, "a", TaskState.RUNNING, at, attempt=1),
                          AttemptStarted(run_id, "a", 1, at, log, "local")])
    _late_run(any_store_url, at + timedelta(minutes=30), log)  # ended, and newer than the lost one
    with Store(any_store_url) as records:
        reader = metrics.MetricsReader(records, settle_secs=0)
        assert_matches(reader.snapshot(), expected(any_store_url))
        assert reader.edge is not None and reader.edge > datetime.now(UTC) - timedelta(minutes=1)
        assert reader.snapshot().runs[("lost", "RUNNING")] == 1 and reader.full_reads == 1
        with Store(any_store_url) as closer:
            assert closer.mark_lost(run_id, "its jobgraph was killed")
        closed = reader.snapshot()
        assert closed.runs == {("lost", "CANCELLED"): 1, ("late", "FAILED"): 1} and closed.pool_jobs == {}
        assert_matches(closed, expected(any_store_url))
        assert reader.full_reads == 2
