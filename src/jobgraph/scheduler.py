"""The scheduler: fires deployed pipelines on their schedules, applies the overlap policy, counts
failures in a row (and suspends), catches up at most once after downtime, and runs `trigger` requests.

It holds a lease row in the store while it acts, renewed every tick, so two `jobgraph serve`
processes never start the same run twice; a lease that is not renewed expires (or, on this host,
its holder is seen dead) and another scheduler takes over. Taking over closes the runs the dead
holder left RUNNING: on this host by their owner's pid (`recover`), on another host by the lease
itself (an expired holder is taken for dead, and a holder that finds its lease taken by another host
cancels its own runs, so a stalled holder never runs on beside its successor). Overlap is decided
against every live RUNNING run of the pipeline in the store, whoever started it. Time comes from an
injected clock, so tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from jobgraph.config import Pipeline
from jobgraph.engine.run import GraphRun, RunResult
from jobgraph.errors import JobgraphError
from jobgraph.owner import owner_is_gone
from jobgraph.schedule import CATCH_UP_COUNT_LIMIT, parse_schedule
from jobgraph.states import RunState
from jobgraph.store import Store
from jobgraph.store.deployments import ACTIVE, SUSPENDED, DeployedPipeline, Deployments, Lease

LEASE = "scheduler"

StartRun = Callable[[DeployedPipeline, Pipeline, datetime, str], GraphRun]
"""Builds (does not start) the GraphRun for a pipeline version, a scheduled time and a trigger."""


@dataclass
class _Active:
    graph_run: GraphRun
    task: asyncio.Task[RunResult]


@dataclass(frozen=True)
class _Queued:
    scheduled: datetime
    trigger: str


def on_this_host(label: str) -> bool:
    """True when an owner label (`host:pid:start`) names a process of this host."""
    return label.partition(":")[0] == socket.gethostname()


def live_lease_holder(deployments: Deployments, now: datetime) -> str | None:
    """The scheduler that holds the lease and may be alive: not expired, and not seen dead on this host."""
    holder = deployments.lease_holder(LEASE, now)
    return None if holder is None or owner_is_gone(holder) else holder


@dataclass
class Scheduler:
    """Decides when deployed pipelines run, and runs them as asyncio tasks."""

    store: Store
    clock: Callable[[], datetime]
    start_run: StartRun
    holder: str
    recover: Callable[[], object]
    """Closes the runs whose orchestrator on this host is gone (recovery.recover_lost_runs, and says so)."""
    lease_ttl_secs: float = 15.0
    on_message: Callable[[str], None] = print
    active: dict[str, list[_Active]] = field(default_factory=dict)
    queued: dict[str, _Queued] = field(default_factory=dict)
    held: bool = False
    deployments: Deployments = field(init=False)

    def __post_init__(self) -> None:
        self.deployments = Deployments(self.store)

    async def tick(self) -> bool:
        """Renew the lease and fire what is due; False (and nothing fired) without the lease."""
        now = self.clock()
        previous = self.deployments.lease(LEASE)
        if not self._acquire(previous, now):
            self._lose_lease(now)
            return False
        if not self.held:
            self._take_over(previous, now)
        self.held = True
        requests = self.deployments.take_requests()
        due = [p for p in self.deployments.all() if p.state == ACTIVE and p.schedule is not None
               and p.next_fire_at is not None and p.next_fire_at <= now]
        if requests or due or self.queued:
            self.recover()  # runs of dead owners must not count for overlap
        for request in requests:
            self._attempt(request.pipeline, request.scheduled_time, "trigger", None)
        for pipeline in due:
            self._fire_due(pipeline, now)
        for name in list(self.queued):
            if self._running_run(name) is None:
                self._start_queued(name)
        return True

    def _acquire(self, previous: Lease | None, now: datetime) -> bool:
        if self.deployments.acquire_lease(LEASE, self.holder, now, self.lease_ttl_secs):
            return True
        dead = previous is not None and previous.holder != self.holder and owner_is_gone(previous.holder)
        return dead and previous is not None and self.deployments.take_lease(
            LEASE, previous.holder, self.holder, now, self.lease_ttl_secs)

    def _take_over(self, previous: Lease | None, now: datetime) -> None:
        """First tick with the lease: close what the previous holder, if dead, left RUNNING."""
        if previous is not None and previous.holder != self.holder:
            why = "its lease ran out" if previous.expires_at < now else "its process is gone"
            self.on_message(f"took over the lease from {previous.holder} ({why})")
        self.recover()
        if previous is None or previous.holder == self.holder or on_this_host(previous.holder) \
                or previous.expires_at >= now:
            return  # on this host `recover` checked its pid
        reason = f"orchestrator lost: its scheduler service {previous.holder} stopped renewing its lease"
        for run in self.store.running_runs():
            if run.owner == previous.holder and self.store.take_over(run):
                self.store.mark_lost(run.run_id, reason)
                self.on_message(f"run {run.run_id} of {run.pipeline}: its scheduler service {previous.holder} "
                                "stopped renewing its lease; marked it CANCELLED (its job processes on that host "
                                f"cannot be checked from here; `jobgraph retry {run.run_id}` resumes it)")

    def _lose_lease(self, now: datetime) -> None:
        """Another scheduler took the lease; on another host it has closed our runs as lost, so stop them."""
        if not self.held:
            return
        self.held = False
        holder = self.deployments.lease_holder(LEASE, now)
        self.on_message(f"lost the lease to {holder or 'another scheduler'}: this scheduler no longer fires")
        self._drop_queued("the scheduler lost its lease before the queued run started")
        if holder is not None and not on_this_host(holder) and self.running():
            self.on_message(f"cancelling {len(self.running())} running run(s): {holder} has taken them for lost")
            for graph_run in self.running():
                graph_run.cancel()

    def _fire_due(self, pipeline: DeployedPipeline, now: datetime) -> None:
        """Fire a due pipeline once, at its latest due fire time, however many were missed."""
        assert pipeline.schedule is not None and pipeline.next_fire_at is not None
        try:
            schedule = parse_schedule(pipeline.schedule)
        except ValueError as exc:  # deployed by an older jobgraph that took it
            self.deployments.update(pipeline.name, state=SUSPENDED, note=f"suspended: its schedule is invalid: {exc}")
            self.on_message(f"{pipeline.name}: suspended, its schedule is invalid: {exc}")
            return
        latest = schedule.last_at_or_before(now, pipeline.anchor) or pipeline.next_fire_at
        fire = max(latest, pipeline.next_fire_at)
        self.deployments.update(pipeline.name, next_fire_at=schedule.next_after(now, pipeline.anchor))
        missed = schedule.count_between(pipeline.next_fire_at, fire, pipeline.anchor)
        counted = f"at least {missed}" if schedule.cron and missed >= CATCH_UP_COUNT_LIMIT else str(missed)
        note = f"caught up: {counted} earlier fire time(s) missed while no scheduler ran" if missed else None
        self._attempt(pipeline.name, fire, "schedule", note)

    def _attempt(self, name: str, scheduled: datetime, trigger: str, note: str | None) -> None:
        """Fire, recording a failure to start as an ERROR fire, so one bad pipeline never stops the others."""
        try:
            self._fire(self.deployments.get(name), scheduled, trigger, note)
        except (JobgraphError, ValueError) as exc:
            self.deployments.record_fire(name, scheduled, "ERROR", self.clock(), note=str(exc))
            self.on_message(f"{name}: could not start a run: {exc}")

    def _fire(self, deployed: DeployedPipeline, scheduled: datetime, trigger: str, note: str | None) -> None:
        pipeline = Pipeline.model_validate_json(self.deployments.snapshot(deployed.name, deployed.version))
        now = self.clock()
        running = self._running_run(deployed.name)
        if running is not None and pipeline.overlap == "skip":
            self.deployments.record_fire(deployed.name, scheduled, "SKIPPED", now,
                                         note=f"the previous run {running} is still running (overlap: skip)")
            self.on_message(f"{deployed.name}: fire at {scheduled:%H:%M:%S} skipped, run {running} still running")
            return
        if running is not None and pipeline.overlap == "queue":
            if deployed.name in self.queued:
                self.deployments.record_fire(deployed.name, scheduled, "SKIPPED", now,
                                             note="a run is already queued (overlap: queue)")
            else:
                self.queued[deployed.name] = _Queued(scheduled, trigger)
                self.deployments.record_fire(deployed.name, scheduled, "QUEUED", now,
                                             note=f"waits for the previous run {running} (overlap: queue)")
            return
        self._start(deployed, pipeline, scheduled, trigger, note)

    def _running_run(self, name: str) -> str | None:
        """A live run of the pipeline: one of ours, or a RUNNING one in the store whose owner is not gone.

        A run with no owner predates owner records and cannot be live; an owner on another host is
        taken for alive (only the lease tells about a scheduler there).
        """
        if self.active.get(name):
            return self.active[name][0].graph_run.run_id
        wanted = name.casefold()
        for run in self.store.running_runs():
            if run.pipeline.casefold() == wanted and run.owner is not None and not owner_is_gone(run.owner):
                return run.run_id
        return None

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
            self._count(name, state)
            if name in self.queued and self._running_run(name) is None:
                self._start_queued(name)
        except (JobgraphError, ValueError) as exc:
            self.on_message(f"{name}: {exc}")

    def _count(self, name: str, state: RunState) -> None:
        """Count failed runs in a row, and suspend the pipeline at its limit."""
        try:
            deployed = self.deployments.get(name)
        except JobgraphError:
            return  # dropped while it ran
        if state == RunState.SUCCEEDED:
            self.deployments.update(name, failures_in_row=0)
        elif state == RunState.FAILED:
            failures = deployed.failures_in_row + 1
            limit = Pipeline.model_validate_json(self.deployments.snapshot(name, deployed.version)) \
                .suspend_after_failures
            if limit is not None and failures >= limit:
                self.deployments.update(name, failures_in_row=failures, state=SUSPENDED,
                                        note=f"suspended after {failures} failed runs in a row")
                self.on_message(f"{name}: suspended after {failures} failed runs in a row")
            else:
                self.deployments.update(name, failures_in_row=failures)

    def _start_queued(self, name: str) -> None:
        """Start the queued fire of a pipeline, read afresh: a suspended or dropped pipeline does not start it."""
        queued = self.queued.pop(name)
        now = self.clock()
        try:
            deployed = self.deployments.get(name)
        except JobgraphError:
            return  # dropped while it waited
        if deployed.state != ACTIVE:
            self.deployments.record_fire(name, queued.scheduled, "SKIPPED", now,
                                         note=f"the pipeline is {deployed.state} (the queued run does not start)")
            self.on_message(f"{name}: queued fire at {queued.scheduled:%H:%M:%S} dropped, the pipeline is "
                            f"{deployed.state}")
            return
        try:
            pipeline = Pipeline.model_validate_json(self.deployments.snapshot(name, deployed.version))
            self._start(deployed, pipeline, queued.scheduled, queued.trigger,
                        "started after the previous run (overlap: queue)")
        except (JobgraphError, ValueError) as exc:
            self.deployments.record_fire(name, queued.scheduled, "ERROR", now, note=str(exc))
            self.on_message(f"{name}: could not start the queued run: {exc}")

    def _drop_queued(self, why: str) -> None:
        for name, queued in self.queued.items():
            self.deployments.record_fire(name, queued.scheduled, "SKIPPED", self.clock(), note=why)
        self.queued.clear()

    def running(self) -> list[GraphRun]:
        """Every graph run this scheduler has going."""
        return [entry.graph_run for entries in self.active.values() for entry in entries]

    async def shutdown(self, drain: bool) -> None:
        """Stop: cancel running runs (recorded CANCELLED), or with `drain` let them finish; free the lease."""
        self._drop_queued("the scheduler stopped before the queued run started")
        tasks = [entry.task for entries in self.active.values() for entry in entries]
        if not drain:
            for graph_run in self.running():
                graph_run.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.deployments.release_lease(LEASE, self.holder)
