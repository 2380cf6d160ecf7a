"""The scheduler: fires deployed pipelines on their schedules, applies the overlap policy, counts
failures in a row (and suspends), catches up at most once after downtime, and runs `trigger` requests.

It holds a lease row in the store while it acts, renewed once a third of its time has passed, so two
`jobgraph serve` processes never start the same run twice; a lease that is not renewed expires (or, on this host,
its holder is seen dead) and another scheduler takes over. Taking over closes the runs the dead
holder left RUNNING: on this host by their owner's pid (`recover`), on another host by the lease
itself (an expired holder is taken for dead, and a holder that finds its lease taken by another host
cancels its own runs, so a stalled holder never runs on beside its successor). Overlap is decided
against every live RUNNING run of the pipeline in the store, whoever started it. Time comes from an
injected clock, so tests move it instead of sleeping.

Between ticks it sleeps until the next fire time, not on a polling tick: while it holds the lease it
listens on the store (store.wakeup: PostgreSQL LISTEN/NOTIFY, a FIFO beside a SQLite file), so a
`trigger`, `deploy`, `resume` or `suspend` from another process wakes it at once. The poll interval
stays as the safety net (and renews the lease): a lost or unavailable wake-up delays, never loses.
The listener itself is scheduler_wakeups.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from jobgraph.config import Pipeline
from jobgraph.engine.run import GraphRun, RunResult
from jobgraph.errors import JobgraphError
from jobgraph.owner import owner_is_gone
from jobgraph.schedule import CATCH_UP_COUNT_LIMIT, parse_schedule
from jobgraph.scheduler_wakeups import Wakeups
from jobgraph.states import RunState
from jobgraph.store import Store
from jobgraph.store.deployments import ACTIVE, SUSPENDED, DeployedPipeline, Deployments, Lease

LEASE = "scheduler"
ARM_LEAD_SECS = 0.5
"""How long before a fire time the scheduler wakes to read the store, renew its lease and close lost runs, so
that at the fire time itself (if nothing woke it in between) it only fires."""

class StartRun(Protocol):
    """Builds (does not start) the GraphRun for a pipeline version, a scheduled time, a trigger and the parameter
    values a `trigger` request gave (JSON text; None: the deployed defaults)."""

    def __call__(self, deployed: DeployedPipeline, pipeline: Pipeline, scheduled: datetime, how: str,
                 params: str | None = None) -> GraphRun: ...


PARAMS_MARK = "\nparams: "
"""In a `trigger` request's note, what starts the JSON object of the parameter values it gives."""


def request_note(note: str, params: str | None) -> str:
    """A request's note carrying its parameter values (the fires table has no column of its own for them)."""
    return note if params is None else f"{note}{PARAMS_MARK}{params}"


def requested_params(note: str | None) -> str | None:
    """The parameter values a request's note carries (JSON text), if any."""
    if note is None or PARAMS_MARK not in note:
        return None
    return note.rsplit(PARAMS_MARK, 1)[1]


@dataclass
class _Active:
    graph_run: GraphRun
    task: asyncio.Task[RunResult]


@dataclass(frozen=True)
class _Queued:
    scheduled: datetime
    trigger: str
    params: str | None = None


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
    next_fire_at: datetime | None = None
    """The earliest fire time of an active pipeline as of the last tick (None without the lease)."""
    deployments: Deployments = field(init=False)
    _wakeups: Wakeups = field(init=False)
    _pipelines: dict[tuple[str, str], Pipeline] = field(init=False, default_factory=dict)
    _scheduled: list[DeployedPipeline] = field(init=False, default_factory=list)
    """The active scheduled pipelines as last read (and fired since)."""
    _refreshed: datetime | None = field(init=False, default=None)
    """When the last full tick with the lease read the store."""
    _armed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.deployments = Deployments(self.store, wakes=False)
        self._wakeups = Wakeups(self.deployments, lambda message: self.on_message(message))

    async def tick(self) -> bool:
        """Renew the lease and fire what is due; False (and nothing fired) without the lease.

        Armed by `wait` (it slept to a fire time with nothing woken since the read just before it), it fires
        from that read: the lease, requests and deployments were read at most ARM_LEAD_SECS ago.
        """
        self.next_fire_at = None  # until this tick has read it: a tick that fails waits a poll interval
        armed, refreshed, self._armed, self._refreshed = self._armed, self._refreshed, False, None
        now = self.clock()
        if armed and self.held and refreshed is not None \
                and timedelta(0) <= now - refreshed <= timedelta(seconds=ARM_LEAD_SECS + 1):
            self._fire_scheduled(now)
            self._refreshed = refreshed
            return True
        previous = self.deployments.lease(LEASE)
        if not self._acquire(previous, now):
            self._lose_lease(now)
            return False
        if not self.held:
            self._take_over(previous, now)
        self.held = True
        requests = self.deployments.take_requests()
        self._scheduled = [p for p in self.deployments.all() if p.state == ACTIVE and p.schedule is not None
                           and p.next_fire_at is not None]
        soon = now + timedelta(seconds=ARM_LEAD_SECS)
        if requests or self.queued or any(p.next_fire_at is not None and p.next_fire_at <= soon
                                          for p in self._scheduled):
            self.recover()  # runs of dead owners must not count for overlap (ahead of an imminent fire, too)
        for request in requests:
            self._attempt(request.pipeline, request.scheduled_time, "trigger", None,
                          params=requested_params(request.note))
        self._fire_scheduled(now)
        for name in list(self.queued):
            if self._running_run(name) is None:
                self._start_queued(name)
        self._refreshed = now
        return True

    def _fire_scheduled(self, now: datetime) -> None:
        """Fire the scheduled pipelines that are due, keep the read up to date, and note the next fire time."""
        kept = []
        for pipeline in self._scheduled:
            assert pipeline.next_fire_at is not None
            if pipeline.next_fire_at > now:
                kept.append(pipeline)
                continue
            following = self._fire_due(pipeline, now)
            if following is not None:
                kept.append(dataclasses.replace(pipeline, next_fire_at=following))
        self._scheduled = kept
        self.next_fire_at = min((p.next_fire_at for p in kept if p.next_fire_at is not None), default=None)

    def _acquire(self, previous: Lease | None, now: datetime) -> bool:
        if self.held and previous is not None and previous.holder == self.holder \
                and (previous.expires_at - now).total_seconds() > self.lease_ttl_secs * 2 / 3:
            return True  # renewed within the last third of its time: still ours, and a write spared per wake-up
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

    def _fire_due(self, pipeline: DeployedPipeline, now: datetime) -> datetime | None:
        """Fire a due pipeline once, at its latest due fire time, however many were missed; its next fire time."""
        assert pipeline.schedule is not None and pipeline.next_fire_at is not None
        try:
            schedule = parse_schedule(pipeline.schedule)
        except ValueError as exc:  # deployed by an older jobgraph that took it
            self.deployments.update(pipeline.name, state=SUSPENDED, note=f"suspended: its schedule is invalid: {exc}")
            self.on_message(f"{pipeline.name}: suspended, its schedule is invalid: {exc}")
            return None
        latest = schedule.last_at_or_before(now, pipeline.anchor) or pipeline.next_fire_at
        fire = max(latest, pipeline.next_fire_at)
        upcoming = schedule.next_after(now, pipeline.anchor)
        missed = schedule.count_between(pipeline.next_fire_at, fire, pipeline.anchor)
        counted = f"at least {missed}" if schedule.cron and missed >= CATCH_UP_COUNT_LIMIT else str(missed)
        note = f"caught up: {counted} earlier fire time(s) missed while no scheduler ran" if missed else None
        self._attempt(pipeline, fire, "schedule", note, upcoming)
        return upcoming

    def _attempt(self, deployed: DeployedPipeline | str, scheduled: datetime, trigger: str, note: str | None,
                 advance: datetime | None = None, params: str | None = None) -> None:
        """Fire, recording a failure to start as an ERROR fire, so one bad pipeline never stops the others.

        `advance` is a scheduled pipeline's next fire time, written in the same transaction as the fire's record.
        """
        name = deployed if isinstance(deployed, str) else deployed.name
        try:
            self._fire(self.deployments.get(name) if isinstance(deployed, str) else deployed, scheduled, trigger,
                       note, advance, params)
        except (JobgraphError, ValueError) as exc:
            self.deployments.record_fire(name, scheduled, "ERROR", self.clock(), note=str(exc), next_fire_at=advance)
            self.on_message(f"{name}: could not start a run: {exc}")

    def _pipeline(self, name: str, version: str) -> Pipeline:
        """A deployed version's pipeline, validated once: a version is its content's hash, so it never changes."""
        key = (name, version)
        if key not in self._pipelines:
            self._pipelines[key] = Pipeline.model_validate_json(self.deployments.snapshot(name, version))
        return self._pipelines[key]

    def _fire(self, deployed: DeployedPipeline, scheduled: datetime, trigger: str, note: str | None,
              advance: datetime | None, params: str | None = None) -> None:
        pipeline = self._pipeline(deployed.name, deployed.version)
        now = self.clock()
        running = None if pipeline.overlap == "allow" else self._running_run(deployed.name)
        if running is not None and pipeline.overlap == "skip":
            self.deployments.record_fire(deployed.name, scheduled, "SKIPPED", now, next_fire_at=advance,
                                         note=f"the previous run {running} is still running (overlap: skip)")
            self.on_message(f"{deployed.name}: fire at {scheduled:%H:%M:%S} skipped, run {running} still running")
            return
        if running is not None and pipeline.overlap == "queue":
            if deployed.name in self.queued:
                self.deployments.record_fire(deployed.name, scheduled, "SKIPPED", now, next_fire_at=advance,
                                             note="a run is already queued (overlap: queue)")
            else:
                self.queued[deployed.name] = _Queued(scheduled, trigger, params)
                self.deployments.record_fire(deployed.name, scheduled, "QUEUED", now, next_fire_at=advance,
                                             note=f"waits for the previous run {running} (overlap: queue)")
            return
        self._start(deployed, pipeline, scheduled, trigger, note, advance, params)

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
               note: str | None, advance: datetime | None = None, params: str | None = None) -> None:
        graph_run = self.start_run(deployed, pipeline, scheduled, trigger, params)
        self.deployments.record_fire(deployed.name, scheduled, "STARTED", self.clock(), graph_run.run_id, note,
                                     next_fire_at=advance)
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
            limit = self._pipeline(name, deployed.version).suspend_after_failures
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
            pipeline = self._pipeline(name, deployed.version)
            self._start(deployed, pipeline, queued.scheduled, queued.trigger,
                        "started after the previous run (overlap: queue)", params=queued.params)
        except (JobgraphError, ValueError) as exc:
            self.deployments.record_fire(name, queued.scheduled, "ERROR", now, note=str(exc))
            self.on_message(f"{name}: could not start the queued run: {exc}")

    def _drop_queued(self, why: str) -> None:
        for name, queued in self.queued.items():
            self.deployments.record_fire(name, queued.scheduled, "SKIPPED", self.clock(), note=why)
        self.queued.clear()

    async def wait(self, poll_secs: float) -> None:
        """Sleep until the next fire time, a wake-up from another process, `wake()`, or at most `poll_secs`.

        Only the lease holder listens (one reader of a SQLite FIFO). A listener opened afresh is followed
        by an immediate tick: what changed before it listened is read from the store, not awaited. While
        it listens, it wakes ARM_LEAD_SECS before a fire time for a full tick, then sleeps to the fire time
        armed: no wake-up in between means the read is current, and the next tick only fires.
        """
        fresh = self._wakeups.listen(self.held)
        delay, arming = poll_secs, False
        if self.next_fire_at is not None:
            until = max(0.0, (self.next_fire_at - self.clock()).total_seconds())
            if self._wakeups.listening and until > ARM_LEAD_SECS:
                delay = min(delay, until - ARM_LEAD_SECS)  # read ahead, then sleep to the fire time armed
            else:
                delay, arming = min(delay, until), self._wakeups.listening and until <= delay
        if fresh:
            delay, arming = 0.0, False
        woken = await self._wakeups.sleep(delay)
        self._armed = arming and not woken  # a wake-up, even one a zero wait timed out on

    def wake(self) -> None:
        """End the current or next `wait` at once (a signal to stop, a change made in this process)."""
        self._wakeups.woken.set()

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
        self._wakeups.stop()
        self.deployments.release_lease(LEASE, self.holder)
