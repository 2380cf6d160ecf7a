"""The scheduler: fires deployed pipelines on their schedules, applies the overlap policy, counts
failures in a row (and suspends), catches up at most once after downtime, and runs `trigger` requests.

It holds a lease row in the store while it acts, renewed every tick, so two `jobgraph serve`
processes never start the same run twice; a lease that is not renewed expires and another scheduler
takes over. Time comes from an injected clock, so tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from jobgraph.config import Pipeline
from jobgraph.engine import GraphRun, RunResult
from jobgraph.schedule import parse_schedule
from jobgraph.states import RunState
from jobgraph.store.deployments import ACTIVE, SUSPENDED, DeployedPipeline, Deployments

LEASE = "scheduler"
MAX_CATCH_UP_STEPS = 100_000
"""Fire times skipped over after downtime are counted up to this many (a 1-minute schedule: 69 days)."""

StartRun = Callable[[DeployedPipeline, Pipeline, datetime, str], GraphRun]
"""Builds (does not start) the GraphRun for a pipeline version, a scheduled time and a trigger."""


@dataclass
class _Active:
    graph_run: GraphRun
    task: asyncio.Task[RunResult]


@dataclass
class Scheduler:
    """Decides when deployed pipelines run, and runs them as asyncio tasks."""

    deployments: Deployments
    clock: Callable[[], datetime]
    start_run: StartRun
    holder: str
    lease_ttl_secs: float = 15.0
    on_message: Callable[[str], None] = print
    active: dict[str, list[_Active]] = field(default_factory=dict)
    queued: dict[str, datetime] = field(default_factory=dict)

    async def tick(self) -> bool:
        """Renew the lease and fire what is due; False (and nothing fired) without the lease."""
        now = self.clock()
        if not self.deployments.acquire_lease(LEASE, self.holder, now, self.lease_ttl_secs):
            return False
        for request in self.deployments.take_requests():
            try:
                requested = self.deployments.get(request.pipeline)
            except Exception as exc:  # dropped since it was requested
                self.on_message(f"trigger of {request.pipeline} ignored: {exc}")
                continue
            self._fire(requested, now, "trigger", None)
        for pipeline in self.deployments.all():
            if pipeline.state != ACTIVE or pipeline.schedule is None or pipeline.next_fire_at is None:
                continue
            if pipeline.next_fire_at > now:
                continue
            schedule = parse_schedule(pipeline.schedule)
            fire, following, missed = pipeline.next_fire_at, schedule.next_after(pipeline.next_fire_at,
                                                                                 pipeline.anchor), 0
            while following <= now and missed < MAX_CATCH_UP_STEPS:
                fire, following, missed = following, schedule.next_after(following, pipeline.anchor), missed + 1
            self.deployments.update(pipeline.name, next_fire_at=following)
            note = f"caught up: {missed} earlier fire time(s) missed while no scheduler ran" if missed else None
            self._fire(pipeline, fire, "schedule", note)
        return True

    def _fire(self, deployed: DeployedPipeline, scheduled: datetime, trigger: str, note: str | None) -> None:
        pipeline = Pipeline.model_validate_json(self.deployments.snapshot(deployed.name, deployed.version))
        now = self.clock()
        if self.active.get(deployed.name):
            if pipeline.overlap == "skip":
                self.deployments.record_fire(deployed.name, scheduled, "SKIPPED", now,
                                             note="the previous run is still running (overlap: skip)")
                self.on_message(f"{deployed.name}: fire at {scheduled:%H:%M:%S} skipped, previous run still running")
                return
            if pipeline.overlap == "queue":
                if deployed.name in self.queued:
                    self.deployments.record_fire(deployed.name, scheduled, "SKIPPED", now,
                                                 note="a run is already queued (overlap: queue)")
                else:
                    self.queued[deployed.name] = scheduled
                    self.deployments.record_fire(deployed.name, scheduled, "QUEUED", now,
                                                 note="waits for the previous run (overlap: queue)")
                return
        self._start(deployed, pipeline, scheduled, trigger, note)

    def _start(self, deployed: DeployedPipeline, pipeline: Pipeline, scheduled: datetime, trigger: str,
               note: str | None) -> None:
        graph_run = self.start_run(deployed, pipeline, scheduled, trigger)
        self.deployments.record_fire(deployed.name, scheduled, "STARTED", self.clock(), graph_run.run_id, note)
        task = asyncio.create_task(graph_run.run())
        entry = _Active(graph_run, task)
        self.active.setdefault(deployed.name, []).append(entry)
        task.add_done_callback(lambda done: self._finished(deployed.name, entry, done))

    def _finished(self, name: str, entry: _Active, task: asyncio.Task[RunResult]) -> None:
        self.active[name].remove(entry)
        state = RunState.FAILED if task.cancelled() or task.exception() is not None else task.result().state
        try:
            deployed = self.deployments.get(name)
        except Exception:
            return  # dropped while it ran
        if state == RunState.SUCCEEDED:
            self.deployments.update(name, failures_in_row=0)
        elif state == RunState.FAILED:
            failures = deployed.failures_in_row + 1
            pipeline = Pipeline.model_validate_json(self.deployments.snapshot(name, deployed.version))
            limit = pipeline.suspend_after_failures
            if limit is not None and failures >= limit:
                self.deployments.update(name, failures_in_row=failures, state=SUSPENDED,
                                        note=f"suspended after {failures} failed runs in a row")
                self.on_message(f"{name}: suspended after {failures} failed runs in a row")
            else:
                self.deployments.update(name, failures_in_row=failures)
        scheduled = self.queued.pop(name, None)
        if scheduled is not None and deployed.state == ACTIVE:
            pipeline = Pipeline.model_validate_json(self.deployments.snapshot(name, deployed.version))
            self._start(deployed, pipeline, scheduled, "schedule", "started after the previous run (overlap: queue)")

    def running(self) -> list[GraphRun]:
        """Every graph run this scheduler has going."""
        return [entry.graph_run for entries in self.active.values() for entry in entries]

    async def shutdown(self, drain: bool) -> None:
        """Stop: cancel running runs (recorded CANCELLED), or with `drain` let them finish; free the lease."""
        self.queued.clear()
        tasks = [entry.task for entries in self.active.values() for entry in entries]
        if not drain:
            for graph_run in self.running():
                graph_run.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.deployments.release_lease(LEASE, self.holder)
