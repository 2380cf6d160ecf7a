"""The scheduler with an injected clock, real local runs, on SQLite and PostgreSQL: fires, overlap,
suspend after failures, catch-up after downtime, trigger requests, and the lease between two schedulers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobgraph.config import Pipeline
from jobgraph.config.validate import check_pipeline
from jobgraph.engine import GraphRun
from jobgraph.runners import LocalRunner
from jobgraph.schedule import parse_schedule
from jobgraph.scheduler import Scheduler
from jobgraph.store import Store
from jobgraph.store.deployments import DeployedPipeline, Deployments
from tests.conftest import sh

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def deploy(store: Store, clock: Clock, script: str, **fields: Any) -> Pipeline:
    pipeline = Pipeline.model_validate({"name": "nightly", "images": {"sh": ["sh", "-c"]},
                                        "schedule": "1 MINUTE", "jobs": [sh("work", script)], **fields})
    Deployments(store).deploy(pipeline.name, pipeline.model_dump_json(), "test", pipeline.schedule, clock(),
                              parse_schedule(str(pipeline.schedule)).next_after(clock(), clock()))
    return pipeline


def make_scheduler(store: Store, clock: Clock, tmp_path: Path, holder: str = "A") -> Scheduler:
    runner = LocalRunner({"sh": ("sh", "-c")}, cwd=tmp_path)

    def start_run(deployed: DeployedPipeline, pipeline: Pipeline, scheduled: datetime, how: str) -> GraphRun:
        return GraphRun(check_pipeline(pipeline, "test"), lambda _job: runner, [store], tmp_path / "logs",
                        scheduled_time=scheduled, trigger=how, version=deployed.version)

    return Scheduler(Deployments(store), clock, start_run, holder, on_message=lambda _text: None)


async def settle(scheduler: Scheduler) -> None:
    """Wait for the runs the scheduler started to finish."""
    while scheduler.running():
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)


def test_fires_on_schedule_with_the_scheduled_time(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, f'echo "$JOBGRAPH_SCHEDULED_TIME" >> {tmp_path / "times"}')
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        clock.advance(seconds=30)
        await scheduler.tick()
        assert scheduler.running() == []
        clock.advance(seconds=31)
        await scheduler.tick()
        await settle(scheduler)
        clock.advance(minutes=1)
        await scheduler.tick()
        await settle(scheduler)

    asyncio.run(scenario())
    assert (tmp_path / "times").read_text().split() == ["2026-11-25T09:01:00+00:00", "2026-11-25T09:02:00+00:00"]
    runs = store.runs(10, "nightly")
    assert [r.state for r in runs] == ["SUCCEEDED", "SUCCEEDED"]
    fires = Deployments(store).fires("nightly")
    assert [(f.action, f.scheduled_time.minute) for f in fires] == [("STARTED", 1), ("STARTED", 2)]
    store.close()


def test_overlap_skip_records_the_skipped_fire(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "sleep 1")
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        clock.advance(minutes=1)
        await scheduler.tick()
        clock.advance(minutes=1)
        await scheduler.tick()
        await settle(scheduler)

    asyncio.run(scenario())
    fires = Deployments(store).fires("nightly")
    assert [f.action for f in fires] == ["STARTED", "SKIPPED"]
    assert fires[1].note == "the previous run is still running (overlap: skip)"
    assert len(store.runs(10, "nightly")) == 1
    store.close()


def test_overlap_queue_runs_after_the_previous_one(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "sleep 0.5", overlap="queue")
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        clock.advance(minutes=1)
        await scheduler.tick()
        clock.advance(minutes=1)
        await scheduler.tick()
        await settle(scheduler)
        await settle(scheduler)

    asyncio.run(scenario())
    assert [f.action for f in Deployments(store).fires("nightly")] == ["STARTED", "QUEUED", "STARTED"]
    runs = store.runs(10, "nightly")
    assert len(runs) == 2 and {r.state for r in runs} == {"SUCCEEDED"}
    store.close()


def test_suspends_after_n_failed_runs_in_a_row(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "exit 1", suspend_after_failures=2)
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        for _ in range(3):
            clock.advance(minutes=1)
            await scheduler.tick()
            await settle(scheduler)

    asyncio.run(scenario())
    deployed = Deployments(store).get("nightly")
    assert deployed.state == "SUSPENDED" and deployed.note == "suspended after 2 failed runs in a row"
    assert len(store.runs(10, "nightly")) == 2
    store.close()


def test_after_downtime_one_catch_up_run_at_most(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "true")
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        clock.advance(minutes=30, seconds=10)
        await scheduler.tick()
        await settle(scheduler)
        await scheduler.tick()
        await settle(scheduler)

    asyncio.run(scenario())
    fires = Deployments(store).fires("nightly")
    assert [f.action for f in fires] == ["STARTED"]
    assert fires[0].scheduled_time == T0 + timedelta(minutes=30)
    assert fires[0].note == "caught up: 29 earlier fire time(s) missed while no scheduler ran"
    assert Deployments(store).get("nightly").next_fire_at == T0 + timedelta(minutes=31)
    store.close()


def test_only_the_lease_holder_fires_and_an_expired_lease_is_taken_over(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "true")
    first, second = make_scheduler(store, clock, tmp_path, "A"), make_scheduler(store, clock, tmp_path, "B")

    async def scenario() -> list[bool]:
        held = [await first.tick()]  # A holds the lease until 09:00:15
        clock.advance(seconds=5)
        held.append(await second.tick())
        clock.advance(seconds=5)
        held.append(await first.tick())  # renewed until 09:00:25
        clock.advance(seconds=10)
        held.append(await second.tick())
        clock.advance(seconds=45)  # 09:01:05: A has stopped renewing, the fire at 09:01 is due
        held.append(await second.tick())
        await settle(second)
        clock.advance(seconds=10)
        held.append(await first.tick())  # B holds it now, until 09:01:20
        return held

    assert asyncio.run(scenario()) == [True, False, True, False, True, False]
    assert [f.action for f in Deployments(store).fires("nightly")] == ["STARTED"]
    assert len(store.runs(10, "nightly")) == 1
    store.close()


def test_a_trigger_request_is_run_once(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "true")
    deployments = Deployments(store)
    deployments.record_fire("nightly", clock(), "REQUESTED", clock(), note="jobgraph trigger")
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        await scheduler.tick()
        await settle(scheduler)
        await scheduler.tick()

    asyncio.run(scenario())
    runs = store.runs(10, "nightly")
    assert len(runs) == 1
    assert [f.action for f in deployments.fires("nightly")] == ["TAKEN", "STARTED"]
    store.close()
