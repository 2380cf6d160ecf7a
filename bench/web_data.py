"""A store of many runs for the web benchmark, recorded the way real runs are: the engine and the store's writer.

Each run is a real `GraphRun` (jobgraph.engine.run) of a pipeline loaded from a YAML file by
jobgraph's own loader, with a stand-in runner and a virtual clock instead of processes and waiting:
the engine emits exactly the events it emits for a real run (queued, running, attempt started and
ended, retries after their delay, timeouts, skips, the finalizer, a cancel), and the store's own
writer (`Store.record_all`, store/writer.py) records them. Only time is simulated: the event loop's
clock jumps to the next timer instead of sleeping, so a job "runs" for minutes in microseconds and
the runs are spread over weeks of history. tests/bench/test_web_data.py checks that a generated run
fills the same tables and columns, with the same kinds of values, as a real `jobgraph run`.

The store holds 10,000 runs (by default) of four deployed pipelines (3, 6 + a finalizer, 13 and 24
jobs, in the proportions 60/30/7/3 %: about 55,000 jobs; scheduled, manual and triggered runs;
some fail, retry, time out or are cancelled; overlapping in time, one starting every 5 minutes), and the
newest run is one of a 5,000-job pipeline (fan-outs and chains, retries with several attempts, every
job state) whose attempts have log files. PostgreSQL: the store is built on SQLite first, then each
table's rows are copied with bulk inserts (bound parameters), values unchanged.

Run: .venv/bin/python bench/web_data.py FOLDER [--runs N] [--big-jobs N] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import selectors
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobgraph.config import Job, Pipeline, load
from jobgraph.engine import attempt as engine_attempt
from jobgraph.engine import run as engine_run
from jobgraph.engine.events import AttemptStarted, Event, RunStarted
from jobgraph.engine.run import GraphRun
from jobgraph.runners.base import JobSpec, Outcome
from jobgraph.states import AttemptStatus, RunState
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from jobgraph.store.records import utc
from jobgraph.store.tables import attempts, pipeline_versions, pipelines, runs, task_runs

EPOCH = datetime(2026, 3, 1, tzinfo=UTC)
"""Virtual time 0: the first generated run starts here (a fixed date: the data never depends on today)."""

RUN_SPACING_SECS = 300.0
"""A run starts every 5 minutes of history, whichever pipeline it is: 10,000 runs cover about 35 days."""

BATCH_EVENTS = 20_000
"""Events recorded per transaction (the writer records any batch in one)."""


@dataclass(frozen=True)
class Shape:
    """A pipeline of the generated store, how often it runs, and how its jobs behave."""

    name: str
    document: dict[str, Any]
    weight: float
    fail_rate: float = 0.02
    """Chance that one attempt fails (exit code 1)."""
    minutes: tuple[float, float] = (0.2, 3.0)
    """A job's duration, uniformly between these."""
    cancel_rate: float = 0.0
    """Chance that a run is cancelled part way."""
    doomed: frozenset[str] = frozenset()
    """Jobs whose every attempt fails."""
    slow: frozenset[str] = frozenset()
    """Jobs whose first attempt outlasts their timeout."""


RETURNS = 'echo "{\\"rows\\": 42}" > "$JOBGRAPH_RETURN_VALUE_FILE"'
"""What a job that returns a value runs (the stand-in returns a row count for it)."""


def _job(name: str, after: Sequence[str] = (), returns: bool = False, **fields: Any) -> dict[str, Any]:
    script = f"echo {name}" + (f"; {RETURNS}" if returns else "")
    return {"name": name, "image": "sh", "args": [script], **({"after": list(after)} if after else {}), **fields}


def _pipeline(name: str, jobs: list[dict[str, Any]], schedule: str | None, **fields: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"name": name, "images": {"sh": ["sh", "-c"]}}
    if schedule:
        document["schedule"] = schedule
    return {**document, **fields, "jobs": jobs}


def shapes() -> list[Shape]:
    """The four pipelines behind the 10,000 runs: small and frequent to wide and nightly."""
    sync = _pipeline("hourly_sync", [_job("fetch", retries=2, retry_delay="30s"), _job("load", ["fetch"], returns=True),
                                     _job("notify", ["load"])], "60 MINUTE", defaults={"pool_size": 2})
    seed_edges = [("t_myjob_1", []), ("t_myjob_2", []), ("t_myjob_3", ["t_myjob_2"]), ("t_myjob_4", ["t_myjob_2"]),
                  ("t_myjob_5", ["t_myjob_1"]), ("t_myjob_6", ["t_myjob_3", "t_myjob_4", "t_myjob_5"])]
    seed = _pipeline("root_task", [_job(name, after, returns=True) for name, after in seed_edges], "59 MINUTE",
                     defaults={"retries": 2, "retry_delay": "1s", "pool_size": 2},
                     finalizer={"name": "finalizer", "image": "sh", "args": ["echo done"]})
    reports = _pipeline("reports", [_job("snapshot")] + [_job(f"report_{i:02d}", ["snapshot"]) for i in range(11)]
                        + [_job("publish", [f"report_{i:02d}" for i in range(11)])], "USING CRON 0 6 * * * UTC",
                        defaults={"pool_size": 4, "retries": 1})
    etl: list[dict[str, Any]] = []
    for source in ("orders", "customers", "stock", "prices"):
        etl += [_job(f"extract_{source}", retries=3, retry_delay="2m", retry_backoff=2.0, timeout="20m"),
                _job(f"clean_{source}", [f"extract_{source}"]),
                _job(f"stage_{source}", [f"clean_{source}"], pool="db")]
    etl += [_job(f"model_{i}", [f"stage_{s}" for s in ("orders", "customers", "stock", "prices")], pool="db")
            for i in range(8)]
    etl += [_job(f"export_{i}", [f"model_{i}", f"model_{(i + 1) % 8}"]) for i in range(4)]
    nightly = _pipeline("nightly_etl", etl, "USING CRON 0 2 * * * UTC", pools={"db": {"max_parallel": 2}},
                        defaults={"pool_size": 4})
    return [Shape("hourly_sync", sync, 0.6, fail_rate=0.03, minutes=(0.1, 1.0)),
            Shape("root_task", seed, 0.3, fail_rate=0.05, minutes=(0.05, 0.5)),
            Shape("reports", reports, 0.07, fail_rate=0.01, minutes=(0.5, 4.0), cancel_rate=0.02),
            Shape("nightly_etl", nightly, 0.03, fail_rate=0.015, minutes=(1.0, 25.0), cancel_rate=0.05)]


def big_shape(jobs: int) -> Shape:
    """A `jobs`-job pipeline (5,000 by default): a 40% fan-out, 20 chains, a second fan-out, joins.

    prepare -> shard_0000..; merge (all done) after the shards -> score_0000..; 20 chains of steps
    after prepare; publish after every score and chain end. A few attempts fail and are retried
    (after a delay), some jobs fail for good, so the chains they are in and publish are skipped.
    """
    rest = jobs - 3
    chains, chain_length = 20, max(1, rest // 5 // 20)
    shards = (rest - chains * chain_length) // 2
    scores = rest - chains * chain_length - shards
    documents = [_job("prepare")]
    documents += [_job(f"shard_{i:04d}", ["prepare"]) for i in range(shards)]
    documents.append(_job("merge", [f"shard_{i:04d}" for i in range(shards)], trigger_rule="all_done"))
    documents += [_job(f"score_{i:04d}", ["merge"]) for i in range(scores)]
    for c in range(chains):
        documents += [_job(f"chain_{c:02d}_step_{s:02d}", [f"chain_{c:02d}_step_{s - 1:02d}" if s else "prepare"])
                      for s in range(chain_length)]
    documents.append(_job("publish", [f"score_{i:04d}" for i in range(scores)]
                          + [f"chain_{c:02d}_step_{chain_length - 1:02d}" for c in range(chains)]))
    document = _pipeline(f"big_{jobs}", documents, None, defaults={"pool_size": 32, "retries": 2,
                                                                   "retry_delay": "20s", "timeout": "30m"})
    doomed = {f"chain_03_step_{chain_length // 2:02d}", f"chain_11_step_{chain_length // 3:02d}", "shard_0007",
              f"score_{scores // 2:04d}"}
    slow = {"shard_0100", f"score_{scores // 3:04d}", f"chain_05_step_{chain_length - 1:02d}"}
    return Shape(f"big_{jobs}", document, 0.0, fail_rate=0.01, minutes=(0.05, 2.0), doomed=frozenset(doomed),
                 slow=frozenset(slow))


class _Clock:
    now = 0.0


class _Skipping(selectors.DefaultSelector):
    """A selector that never sleeps: waiting `timeout` seconds moves the virtual clock on by as much."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("the virtual clock's loop waits for nothing that is scheduled: a run hangs")
        self._clock.now += max(timeout, 0.0)
        return super().select(0)


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to its next timer: `asyncio.sleep(600)` returns at once, 600 s later."""

    def __init__(self) -> None:
        self.clock = _Clock()
        super().__init__(_Skipping(self.clock))

    def time(self) -> float:
        return self.clock.now

    def at(self) -> datetime:
        """The virtual time as the engine stamps it."""
        return EPOCH + timedelta(seconds=self.clock.now)


@dataclass
class StandIn:
    """The runner: each attempt takes a random time and ends as the dice say; nothing is started.

    It writes each attempt's log file (when `logs`), as a runner does, and a return value now and
    then; a failed attempt's log tail joins its error, as the engine asks every runner for it.
    """

    shape: Shape
    dice: random.Random
    write_logs: bool
    name: str = "local"

    async def open(self) -> None:
        """Nothing to connect to."""

    async def start(self, spec: JobSpec) -> JobSpec:
        if self.write_logs:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            lines = [f"{spec.task} attempt {spec.attempt} of run {spec.run_id}"]
            lines += [f"step {i}: processed {self.dice.randrange(1, 10_000)} rows" for i in range(8)]
            spec.log_path.write_text("\n".join(lines) + "\n")
        return spec

    async def adopt(self, reference: str, spec: JobSpec) -> JobSpec:
        raise AssertionError("the stand-in runner adopts nothing")

    async def wait(self, spec: JobSpec) -> Outcome:
        low, high = self.shape.minutes
        await asyncio.sleep(60 * self.dice.uniform(low, high))
        doomed = spec.task in self.shape.doomed
        if spec.task in self.shape.slow and spec.attempt == 1:
            await asyncio.sleep(3600)  # beyond the job's timeout: the engine times the attempt out
        if doomed or self.dice.random() < self.shape.fail_rate * (2 if spec.attempt == 1 else 1):
            if self.write_logs:
                with spec.log_path.open("a") as log:
                    log.write("Traceback (most recent call last):\nValueError: upstream returned 503\n")
            return Outcome(AttemptStatus.FAILED, 1, "exit code 1")
        return Outcome(AttemptStatus.DONE, 0)

    async def logs(self, handle: JobSpec, tail_bytes: int) -> str:
        """The end of the attempt's log, as a runner reads it for a failed attempt's error."""
        text = handle.log_path.read_text() if self.write_logs else "ValueError: upstream returned 503\n"
        return text[-tail_bytes:]

    async def read_return_value(self, handle: JobSpec, max_bytes: int) -> str | None:
        """A row count, for a job whose script writes one."""
        return f'{{"rows": {self.dice.randrange(100, 100_000)}}}' if RETURNS in " ".join(handle.args) else None

    def handle_ref(self, handle: JobSpec) -> str:
        return ""

    def describe(self, spec: JobSpec) -> dict[str, object]:
        return {}

    async def cancel(self, handle: JobSpec) -> None:
        return None

    async def aclose(self) -> None:
        return None


class _Collector:
    """An essential listener that keeps every batch the engine delivers, for the store to record in bulk."""

    essential = True

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def record_all(self, events: Sequence[Event]) -> None:
        self.events.extend(events)


@contextmanager
def virtual_engine(loop: VirtualLoop) -> Iterator[None]:
    """The engine stamps events with the virtual clock's time while the block runs."""
    real = engine_run.now
    engine_run.now = engine_attempt.now = loop.at
    try:
        yield
    finally:
        engine_run.now = engine_attempt.now = real


@dataclass
class Generated:
    """What was generated: the store, the big run's id, counts."""

    url: str
    big_run_id: str
    runs: int
    jobs: int
    attempts: int
    seconds: float
    pipelines: list[str]


def write_pipeline(folder: Path, shape: Shape) -> Path:
    """The shape's pipeline file: YAML in its JSON form (PyYAML's pure-Python dumper takes 2 s for 5,000 jobs)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{shape.name}.yaml"
    path.write_text(json.dumps(shape.document, indent=1) + "\n")
    return path


def write_pipelines(folder: Path, all_shapes: Sequence[Shape]) -> dict[str, Pipeline]:
    """Each shape as a pipeline file, loaded by jobgraph's own loader (what `jobgraph run FILE` runs)."""
    return {shape.name: load(write_pipeline(folder, shape)) for shape in all_shapes}


def run_once(loop: VirtualLoop, pipeline: Pipeline, shape: Shape, dice: random.Random, log_dir: Path, *,
             start: float, trigger: str, version: str | None, logs: bool) -> list[Event]:
    """One GraphRun in virtual time from `start` (seconds after EPOCH); the events it delivered, in order."""
    loop.clock.now = start  # runs of different pipelines overlap, as they do
    collector = _Collector()
    runner = StandIn(shape, dice, write_logs=logs)

    def runner_for(_job: Job) -> StandIn:
        return runner

    scheduled = loop.at() if trigger != "schedule" else loop.at().replace(second=0, microsecond=0)
    graph_run = GraphRun(pipeline, runner_for, [collector], log_dir, run_id=_uuid(dice), scheduled_time=scheduled,
                         trigger=trigger, version=version)
    cancel = loop.call_later(60 * dice.uniform(*shape.minutes) * 2, graph_run.cancel) \
        if dice.random() < shape.cancel_rate else None
    result = loop.run_until_complete(graph_run.run())
    if cancel is not None:
        cancel.cancel()  # the run may have ended before it
    if result.state not in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED):
        raise AssertionError(f"run {result.run_id} ended {result.state}")
    return collector.events


def _uuid(dice: random.Random) -> str:
    """A UUID4 from the seeded dice: the same store every time."""
    import uuid

    return str(uuid.UUID(int=dice.getrandbits(128), version=4))


def generate(folder: Path, runs: int = 10_000, big_jobs: int = 5_000, seed: int = 13,
             say: Callable[[str], None] = print) -> Generated:
    """Build the store at FOLDER/jobgraph.db (logs in FOLDER/logs): `runs` runs, the newest a `big_jobs`-job run."""
    began = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "jobgraph.db"
    if database.exists():
        raise SystemExit(f"{database} exists: give an empty folder")
    url = f"sqlite:///{database}"
    small = shapes()
    big = big_shape(big_jobs)
    pipelines = write_pipelines(folder / "pipelines", [*small, big])
    dice = random.Random(seed)
    loop = VirtualLoop()
    asyncio.set_event_loop(loop)
    totals = {"jobs": 0, "attempts": 0}
    with Store(url) as store, virtual_engine(loop):
        store.owner = "generator:0@bench"
        deployments = Deployments(store)
        versions: dict[str, str | None] = {}
        for shape in small:
            pipeline = pipelines[shape.name]
            version, _ = deployments.deploy(shape.name, pipeline.model_dump_json(),
                                            str(folder / "pipelines" / f"{shape.name}.yaml"), pipeline.schedule,
                                            EPOCH - timedelta(days=1), EPOCH)
            versions[shape.name] = version
        pending: list[Event] = []

        def keep(events: list[Event]) -> None:
            pending.extend(events)
            totals["jobs"] += sum(len(e.tasks) for e in events if isinstance(e, RunStarted))
            totals["attempts"] += sum(1 for e in events if isinstance(e, AttemptStarted))
            if len(pending) >= BATCH_EVENTS:
                store.record_all(pending)
                pending.clear()

        weights = [shape.weight for shape in small]
        for index in range(runs - 1):
            shape = dice.choices(small, weights)[0]
            kind = dice.random()
            trigger = "schedule" if kind < 0.85 else ("trigger" if kind < 0.93 else "manual")
            start = index * RUN_SPACING_SECS + dice.uniform(0.1, 3.0)
            run_version = None if trigger == "manual" else versions[shape.name]
            keep(run_once(loop, pipelines[shape.name], shape, dice, folder / "logs", start=start, trigger=trigger,
                          version=run_version, logs=False))
        events = run_once(loop, pipelines[big.name], big, dice, folder / "logs",
                          start=(runs - 1) * RUN_SPACING_SECS, trigger="manual", version=None, logs=True)
        big_run_id = events[0].run_id
        keep(events)
        store.record_all(pending)
    loop.close()
    asyncio.set_event_loop(None)
    took = time.perf_counter() - began
    say(f"generated {runs:,} runs ({totals['jobs']:,} jobs, {totals['attempts']:,} attempts) in {url} "
        f"in {took:.1f} s; the {big_jobs:,}-job run is {big_run_id}")
    return Generated(url, big_run_id, runs, totals["jobs"], totals["attempts"], took,
                     [shape.name for shape in (*small, big)])


COPIED = (pipelines, pipeline_versions, runs, task_runs, attempts)
"""The tables a generated store fills, in an order their foreign keys accept."""


def copy_store(sqlite_url: str, target_url: str, say: Callable[[str], None] = print) -> None:
    """Copy a generated SQLite store's rows into an empty store at `target_url` (PostgreSQL), values unchanged.

    SQLAlchemy reads each row typed (times as datetimes, read back as UTC; booleans) and inserts it
    with bound parameters, many rows per statement; the attempts' id sequence then goes on after them.
    The tables are then ANALYZEd, as autovacuum does within a minute of a load this size: without
    statistics PostgreSQL plans the job counts of a page of runs as a scan of every job (90 ms, not 30).
    """
    from sqlalchemy import create_engine, func, insert, select, text

    began = time.perf_counter()
    source = create_engine(sqlite_url)
    with Store(target_url) as target:
        with target.engine.begin() as conn, source.connect() as reading:
            if conn.execute(select(func.count()).select_from(runs)).scalar():
                raise SystemExit(f"{target_url} already has runs: give an empty store")
            for table in COPIED:
                rows = [{key: utc(value) if isinstance(value, datetime) else value for key, value in row.items()}
                        for row in reading.execute(select(table)).mappings()]
                for first in range(0, len(rows), 5_000):
                    conn.execute(insert(table), rows[first:first + 5_000])
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT setval(pg_get_serial_sequence('attempts', 'id'), "
                                  "(SELECT max(id) FROM attempts))"))
        with target.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    source.dispose()
    say(f"copied the store into {target_url} in {time.perf_counter() - began:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="an empty folder: the store and the logs go there")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--big-jobs", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--postgres", metavar="URL", help="also copy the store into this empty PostgreSQL database")
    args = parser.parse_args()
    generated = generate(args.folder, args.runs, args.big_jobs, args.seed)
    if args.postgres:
        copy_store(generated.url, args.postgres)


if __name__ == "__main__":
    main()
