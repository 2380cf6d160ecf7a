"""The scheduler with an injected clock, real local runs, on SQLite and PostgreSQL: fires, overlap (against
runs of any process), suspend after failures, catch-up after downtime, trigger requests, and the lease
between two schedulers, with the dead holder's runs closed on takeover."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, insert, update

from jobgraph.config import Pipeline
from jobgraph.config.validate import check_pipeline
from jobgraph.engine.events import RunStarted, TaskInfo
from jobgraph.engine.run import GraphRun
from jobgraph.recovery import recover_lost_runs
from jobgraph.runners.local import LocalRunner
from jobgraph.schedule import parse_schedule
from jobgraph.scheduler import LEASE, Scheduler
from jobgraph.store import Store
from jobgraph.store.deployments import DeployedPipeline, Deployments
from jobgraph.store.tables import leases, runs
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


def make_scheduler(store: Store, clock: Clock, tmp_path: Path, holder: str = "A",
                   messages: list[str] | None = None) -> Scheduler:
    runner = LocalRunner({"sh": ("sh", "-c")}, cwd=tmp_path)

    def start_run(deployed: DeployedPipeline, pipeline: Pipeline, scheduled: datetime, how: str,
                  params: str | None = None) -> GraphRun:
        return GraphRun(check_pipeline(pipeline, "test"), lambda _job: runner, [store], tmp_path / "logs",
                        scheduled_time=scheduled, trigger=how, version=deployed.version)

    said = messages if messages is not None else []
    return Scheduler(store, clock, start_run, holder, recover=lambda: recover_lost_runs(store, tmp_path),
                     on_message=said.append)


def dead_owner() -> str:
    """The owner label of a process of this host that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}:1"


def record_running_run(store: Store, url: str, pipeline: Pipeline, owner: str) -> str:
    """A RUNNING run of the pipeline in the store, as if the process `owner` ran it."""
    run_id = str(uuid.uuid4())
    store(RunStarted(run_id, pipeline.name, T0, T0, (TaskInfo("work", "default", "sh", ()),),
                     pipeline.model_dump_json(), trigger="manual"))
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.run_id == run_id).values(owner=owner))
    engine.dispose()
    return run_id


def hold_lease(url: str, holder: str, expires_at: datetime) -> None:
    """Write the scheduler's lease as a (now dead) scheduler left it."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(leases).values(name=LEASE, holder=holder, expires_at=expires_at.replace(tzinfo=None)))
    engine.dispose()


@pytest.fixture
def manual_run(tmp_path: Path, any_store_url: str) -> Iterator[subprocess.Popen[str]]:
    """A real `jobgraph run` of pipeline `nightly` (a job sleeping 60 s) going on in another process."""
    file = tmp_path / "by-hand.yaml"
    file.write_text(yaml.safe_dump({"name": "nightly", "images": {"sh": ["sh", "-c"]},
                                    "jobs": [sh("work", "sleep 60")]}))
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(file), "--store", any_store_url],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    store = Store(any_store_url)
    deadline = time.monotonic() + 60
    while not any(run.pipeline == "nightly" for run in store.running_runs()):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the manual run did not start"
        time.sleep(0.05)
    store.close()
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


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
    assert fires[1].note == f"the previous run {fires[0].run_id} is still running (overlap: skip)"
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


def test_it_sleeps_until_the_next_fire_time_not_its_poll_and_renews_its_lease_a_third_in(
        any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "true")  # fires every minute from 09:00
    scheduler = make_scheduler(store, clock, tmp_path)
    deployments = Deployments(store)

    async def scenario() -> list[float]:
        assert await scheduler.tick()
        assert scheduler.next_fire_at == T0 + timedelta(minutes=1)
        clock.advance(seconds=4)
        await scheduler.tick()
        lease = deployments.lease(LEASE)
        assert lease is not None and lease.expires_at == T0 + timedelta(seconds=15)  # fresh: not rewritten
        clock.advance(seconds=2)
        await scheduler.tick()
        lease = deployments.lease(LEASE)
        assert lease is not None and lease.expires_at == T0 + timedelta(seconds=21)  # a third gone: renewed
        clock.advance(seconds=53.8)  # 0.2 s before the fire time
        took = []
        for _ in range(2):  # the first wait also opens the wake-up listener, and returns at once to read
            began = time.monotonic()
            await scheduler.wait(600)
            took.append(time.monotonic() - began)
        clock.advance(seconds=0.2)
        assert await scheduler.tick()  # armed: it fires from the read made 0.2 s before the fire time
        await settle(scheduler)
        await scheduler.shutdown(drain=True)
        return took

    took = asyncio.run(scenario())
    assert took[1] < 60, took  # the fire time woke it, not the 600 s poll
    [fire] = deployments.fires("nightly")
    assert (fire.action, fire.scheduled_time) == ("STARTED", T0 + timedelta(minutes=1))
    assert deployments.get("nightly").next_fire_at == T0 + timedelta(minutes=2)
    store.close()


def test_a_wake_up_pending_at_the_fire_time_makes_the_tick_read_the_store(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "true", overlap="allow")
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        assert await scheduler.tick()
        await scheduler.wait(600)  # opens the listener, returns at once
        clock.advance(seconds=59.8)
        assert await scheduler.tick()  # the read ahead of the fire time
        clock.advance(seconds=0.2)  # at the fire time: the next wait does not sleep, and would fire from that read
        Deployments(store).record_fire("nightly", clock(), "REQUESTED", clock())  # a `trigger` wakes it
        deadline = time.monotonic() + 30
        while not scheduler._wakeups.woken.is_set():
            assert time.monotonic() < deadline, "the request did not wake the scheduler"
            await asyncio.sleep(0.01)
        await scheduler.wait(600)
        assert await scheduler.tick()  # not armed: it reads the store, so the request runs with the fire
        await settle(scheduler)
        await scheduler.shutdown(drain=True)

    asyncio.run(scenario())
    assert sorted(f.action for f in Deployments(store).fires("nightly")) == ["STARTED", "STARTED", "TAKEN"]
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


@pytest.mark.parametrize("schedule", ["1 MINUTE", "* * * * *"])
def test_after_200_days_down_one_catch_up_run_and_no_more(any_store_url: str, tmp_path: Path, schedule: str) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "true", schedule=schedule)
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        clock.advance(days=200, seconds=10)
        for _ in range(5):
            await scheduler.tick()
            await settle(scheduler)
            clock.advance(seconds=5)

    asyncio.run(scenario())
    fires = Deployments(store).fires("nightly")
    assert [f.action for f in fires] == ["STARTED"]
    assert fires[0].scheduled_time == T0 + timedelta(days=200)
    missed = "287999" if schedule == "1 MINUTE" else "at least 1000"
    assert fires[0].note == f"caught up: {missed} earlier fire time(s) missed while no scheduler ran"
    assert Deployments(store).get("nightly").next_fire_at == T0 + timedelta(days=200, minutes=1)
    assert len(store.runs(10, "nightly")) == 1
    store.close()


def test_a_pipeline_suspended_by_failures_does_not_start_its_queued_fire(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "sleep 0.5; exit 1", overlap="queue", suspend_after_failures=1)
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        clock.advance(minutes=1)
        await scheduler.tick()
        clock.advance(minutes=1)
        await scheduler.tick()  # queued behind the failing run
        await settle(scheduler)
        for _ in range(3):
            clock.advance(seconds=1)
            await scheduler.tick()
            await settle(scheduler)

    asyncio.run(scenario())
    deployed = Deployments(store).get("nightly")
    assert deployed.state == "SUSPENDED"
    fires = Deployments(store).fires("nightly")
    assert [f.action for f in fires] == ["STARTED", "QUEUED", "SKIPPED"]
    assert fires[2].note == "the pipeline is SUSPENDED (the queued run does not start)"
    assert [r.state for r in store.runs(10, "nightly")] == ["FAILED"]
    store.close()


def test_overlap_counts_a_run_started_by_hand_in_another_process(
        any_store_url: str, tmp_path: Path, manual_run: subprocess.Popen[str]) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "true", overlap="queue")
    by_hand = store.running_runs()[0]
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        clock.advance(minutes=1)
        await scheduler.tick()
        assert scheduler.running() == []
        manual_run.send_signal(signal.SIGTERM)  # the run by hand ends (recorded CANCELLED)
        await asyncio.to_thread(manual_run.wait, 60)
        clock.advance(seconds=1)
        await scheduler.tick()
        await settle(scheduler)

    asyncio.run(scenario())
    assert store.run(by_hand.run_id).state == "CANCELLED"
    fires = Deployments(store).fires("nightly")
    assert [f.action for f in fires] == ["QUEUED", "STARTED"]
    assert fires[0].note == f"waits for the previous run {by_hand.run_id} (overlap: queue)"
    assert fires[1].scheduled_time == T0 + timedelta(minutes=1)
    assert sorted(r.state for r in store.runs(10, "nightly")) == ["CANCELLED", "SUCCEEDED"]
    store.close()


def test_overlap_skip_against_a_live_owner_but_not_a_dead_one(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    pipeline = deploy(store, clock, "true")
    live = subprocess.Popen(["sleep", "60"])
    try:
        with open(f"/proc/{live.pid}/stat") as stat:
            started = stat.read().rsplit(")", 1)[1].split()[19]
        alive = record_running_run(store, any_store_url, pipeline, f"{socket.gethostname()}:{live.pid}:{started}")
        scheduler = make_scheduler(store, clock, tmp_path)

        async def first() -> None:
            clock.advance(minutes=1)
            await scheduler.tick()

        asyncio.run(first())
    finally:
        live.kill()
        live.wait()

    async def second() -> None:  # its owner is gone now: the run is closed first, then the fire starts
        clock.advance(minutes=1)
        await scheduler.tick()
        await settle(scheduler)

    asyncio.run(second())
    fires = Deployments(store).fires("nightly")
    assert [f.action for f in fires] == ["SKIPPED", "STARTED"]
    assert fires[0].note == f"the previous run {alive} is still running (overlap: skip)"
    lost = store.run(alive)
    assert lost.state == "CANCELLED"
    assert (store.tasks(alive)[0].error_message or "").startswith("orchestrator lost")
    store.close()


def test_taking_over_from_a_dead_holder_on_this_host_closes_its_runs_at_once(
        any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    pipeline = deploy(store, clock, "true")
    dead = dead_owner()
    hold_lease(any_store_url, dead, T0 + timedelta(minutes=5))  # not expired: its pid tells it is dead
    orphan = record_running_run(store, any_store_url, pipeline, dead)
    messages: list[str] = []
    scheduler = make_scheduler(store, clock, tmp_path, "B", messages)

    async def scenario() -> bool:
        clock.advance(minutes=1)
        held = await scheduler.tick()
        await settle(scheduler)
        return held

    assert asyncio.run(scenario()) is True
    assert Deployments(store).lease_holder(LEASE, clock()) == "B"
    assert f"took over the lease from {dead} (its process is gone)" in messages
    assert store.run(orphan).state == "CANCELLED"
    assert [f.action for f in Deployments(store).fires("nightly")] == ["STARTED"]
    store.close()


def test_taking_over_from_another_host_closes_the_expired_holders_runs_only(
        any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    pipeline = deploy(store, clock, "true")
    holder, by_hand = "elsewhere:4242:99", "elsewhere:5151:99"
    hold_lease(any_store_url, holder, T0 + timedelta(seconds=30))
    orphan = record_running_run(store, any_store_url, pipeline, holder)
    other = record_running_run(store, any_store_url, pipeline, by_hand)
    messages: list[str] = []
    scheduler = make_scheduler(store, clock, tmp_path, "B", messages)

    async def scenario() -> list[bool]:
        held = [await scheduler.tick()]  # the lease has not expired: a holder elsewhere cannot be checked
        clock.advance(minutes=1)
        held.append(await scheduler.tick())
        await settle(scheduler)
        return held

    assert asyncio.run(scenario()) == [False, True]
    assert store.run(orphan).state == "CANCELLED"
    assert (store.tasks(orphan)[0].error_message or "").startswith(f"orchestrator lost: its scheduler service {holder}")
    assert store.run(other).state == "RUNNING"
    fires = Deployments(store).fires("nightly")
    assert [(f.action, f.note) for f in fires] == [
        ("SKIPPED", f"the previous run {other} is still running (overlap: skip)")]
    assert any(message.startswith(f"run {orphan} of nightly: its scheduler service {holder}") for message in messages)
    store.close()


def test_a_scheduler_whose_lease_another_host_took_cancels_its_runs(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "sleep 60")
    here = make_scheduler(store, clock, tmp_path, f"{socket.gethostname()}:1:1")
    there = make_scheduler(store, clock, tmp_path, "elsewhere:4242:99")

    async def scenario() -> list[bool]:
        clock.advance(minutes=1)
        held = [await here.tick()]
        while not store.running_runs():
            await asyncio.sleep(0.02)
        clock.advance(seconds=20)  # `here` stalled: its lease ran out
        held.append(await there.tick())
        held.append(await here.tick())
        await settle(here)
        return held

    assert asyncio.run(scenario()) == [True, True, False]
    assert [r.state for r in store.runs(10, "nightly")] == ["CANCELLED"]
    assert store.running_runs() == []
    store.close()


def test_a_request_that_cannot_start_is_recorded_and_the_others_still_fire(any_store_url: str, tmp_path: Path) -> None:
    store, clock = Store(any_store_url), Clock()
    deploy(store, clock, "true")
    deployments = Deployments(store)
    deployments.record_fire("gone", clock(), "REQUESTED", clock(), note="jobgraph trigger")
    scheduler = make_scheduler(store, clock, tmp_path)

    async def scenario() -> None:
        clock.advance(minutes=1)
        await scheduler.tick()
        await settle(scheduler)

    asyncio.run(scenario())
    outcome = deployments.request_outcome("gone", T0)
    assert outcome is not None and outcome.action == "ERROR"
    assert outcome.note == "no deployed pipeline named 'gone' (`jobgraph pipelines` lists them)"
    assert [f.action for f in deployments.fires("nightly")] == ["STARTED"]
    store.close()
