"""Graph runs hosted on the current asyncio loop, for a process that serves (the scheduler service, the web
server): a retry or a trigger starts as a task and the caller gets its run id at once; closing the host
cancels (or drains) every run it hosts and waits for them, so no job process outlives it.

What it starts is what the command line would have started: a retry claims the run exactly like
`jobgraph retry` (of several, one wins), a trigger goes to a live scheduler service as a request like
`jobgraph trigger`, else runs the deployed version here. Lost runs are closed first, as every command does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobgraph.app.lost_runs import claim_resumptions, report_lost_runs
from jobgraph.app.pipelines import now
from jobgraph.app.retry import claim_retry, release
from jobgraph.app.runs import (
    RecordedRun,
    RunPlan,
    close_runners,
    drive,
    open_runners,
    recorded_run,
    runner_factory,
    store_params,
    store_patience,
)
from jobgraph.app.trigger import (
    POLL_SECS,
    STARTED,
    TriggerOutcome,
    await_outcome_async,
    deployed_plan,
    outcome_of,
    request,
)
from jobgraph.config import Pipeline, check_pipeline
from jobgraph.engine import Listener, RunStarted
from jobgraph.engine.run import GraphRun, RunResult
from jobgraph.errors import StoreError
from jobgraph.runners import AnyRunner
from jobgraph.scheduler import live_lease_holder
from jobgraph.store import Store
from jobgraph.store.deployments import DeployedPipeline, Deployments

SERVICE_RECORD_SECS = 10.0
"""How long a trigger taken by a service waits for the service to record the run it started."""


@dataclass(frozen=True)
class _Hosted:
    graph_run: GraphRun
    task: asyncio.Task[RunResult]


class RunHost:
    """Runs graph runs as tasks of the running asyncio loop; `say` gets one line per thing worth saying.

    `note` gets what jobgraph did on its own (closing lost runs; `say` by default); `view_for(label)` gives
    a listener that shows a run (the service's one line per event), if any. Every method is called on the
    loop's own thread (an async endpoint, not a worker thread): the Store is used there.
    """

    def __init__(self, records: Store, runner: str | None, say: Callable[[str], None], *,
                 note: Callable[[str], None] | None = None,
                 view_for: Callable[[str], Listener] | None = None) -> None:
        self._records = records
        self._runner = runner
        self._say = say
        self._note = note or say
        self._view_for = view_for
        self._patience = store_patience()
        self._hosted: dict[str, _Hosted] = {}
        self._recorders: list[RecordedRun] = []
        self._kept: dict[tuple[str, str], dict[str, AnyRunner]] = {}
        """The runners of the runs a service starts (scheduled and resumed ones), made once per pipeline version
        (a runner is set up for one pipeline: the local one knows its `images`), closed with the host."""

    def recorded(self, label: str, plan: RunPlan, runners: dict[str, AnyRunner],
                 started: asyncio.Event | None = None) -> RecordedRun:
        """A run's graph run, recorded (runs.recorded_run) and shown with `label`; its recorder is flushed again
        at each `flush` until the store has taken all it wrote. `started` is set once its start is recorded."""
        listeners: list[Listener] = [] if self._view_for is None else [self._view_for(label)]
        if started is not None:
            listeners.append(lambda event: started.set() if isinstance(event, RunStarted) else None)
        recorded = recorded_run(self._records, plan, runner_factory(plan.pipeline, self._runner, runners), listeners,
                                lambda message: self._say(f"[{label}] error: {message}"),
                                lambda message: self._say(f"[{label}] warning: {message}"), self._patience)
        self._recorders[:] = [*(r for r in self._recorders if not r.recorder.finished), recorded]
        return recorded

    def scheduled_run(self, deployed: DeployedPipeline, pipeline: Pipeline, scheduled: datetime,
                      how: str, params: str | None = None) -> GraphRun:
        """The graph run the scheduler starts for a fire (scheduler.StartRun), with the parameter values a trigger
        request gave (else the deployed defaults); the scheduler runs it."""
        checked = check_pipeline(pipeline, f"pipeline {deployed.name}", self._runner)
        plan = RunPlan(checked, scheduled_time=scheduled, trigger=how, version=deployed.version,
                       params=store_params(params))
        return self.recorded(deployed.name, plan, self._runners_of((deployed.name, deployed.version))).graph_run

    def recover(self) -> list[str]:
        """Close lost runs, saying so; resume here those that left remote attempts. The run ids resumed."""
        resumed = []
        for resumption in claim_resumptions(self._records, report_lost_runs(self._records, self._note)):
            self._say(resumption.announce())
            previous = resumption.previous
            runners = self._runners_of((previous.pipeline, previous.version or previous.run_id))
            recorded = self.recorded(previous.pipeline, resumption.plan(), runners)
            resumed.append(self._host(recorded, drive(self._records, recorded, {}, self._say)))
        return resumed

    async def start_retry(self, run_id: str, by: str, jobs: Sequence[str] = (), downstream: bool = False) -> str:
        """Claim a run like `jobgraph retry` and run its failed, skipped and cancelled jobs again as a task (or the
        `jobs` named, and `downstream` what depends on them); its run id. StoreError when the run succeeded (and
        no job is named), is running, is unknown or another process claimed it first; ConfigError for a job that
        is not the run's; a runner that cannot be reached gives the run back and raises RunnerError."""
        if (resumed := self._resumed(run_id)) is not None:
            return resumed
        retry = claim_retry(self._records, self._records.run(run_id), None, self._runner, jobs, downstream,
                            field="jobs")
        for line in retry.announce():
            self._say(f"{by}: {line}")
        started = asyncio.Event()
        try:
            recorded, runners = await self._opened(retry.previous.pipeline, retry.plan, started)
        except BaseException:
            release(self._records, retry)
            raise
        run_id = self._host(recorded, self._retrying(recorded, runners, lambda: release(self._records, retry)))
        await self._recorded(run_id, started)
        return run_id

    async def start_trigger(self, name: str, by: str, params: Mapping[str, object] | None = None) -> TriggerOutcome:
        """Run a deployed pipeline now, with these parameter values (the others' defaults): a live scheduler
        service takes it as a request (its outcome is returned once the service acted on it), else its deployed
        version starts here as a task. The run is not waited for, but a run id returned is in the store.
        StoreError for an unknown pipeline; ConfigError for bad parameters (nothing runs); JobgraphError when
        the service could not start it."""
        deployments = Deployments(self._records)
        deployed = deployments.get(name)
        plan = deployed_plan(deployments, deployed, self._runner, params)
        holder = live_lease_holder(deployments, now())
        if holder is not None:
            requested = request(deployments, deployed.name, by, plan.params)
            fire = await await_outcome_async(deployments, deployed.name, requested)
            if fire is not None:
                outcome = outcome_of(fire, holder)
                if outcome.run_id is not None:
                    await self._in_store(outcome.run_id)
                return outcome
            self._say(f"{deployed.name}: the scheduler service {holder} stopped before taking the request of {by} "
                      "(request withdrawn); running it here")
        self.recover()
        started = asyncio.Event()
        recorded, runners = await self._opened(deployed.name, plan, started)
        self._say(f"{deployed.name}: run {recorded.graph_run.run_id} triggered by {by}")
        run_id = self._host(recorded, drive(self._records, recorded, runners, self._say))
        await self._recorded(run_id, started)
        return TriggerOutcome(STARTED, run_id)

    def running(self) -> list[str]:
        """The ids of the runs this host has going (a service's scheduled runs are its scheduler's)."""
        return [run_id for run_id, hosted in self._hosted.items() if not hosted.task.done()]

    def flush(self) -> None:
        """Write again what a store that was down did not take (a service calls it at each tick)."""
        for recorded in self._recorders:
            recorded.recorder.flush()
        self._recorders[:] = [r for r in self._recorders if not r.recorder.finished]

    async def stop(self, drain: bool) -> None:
        """Cancel every hosted run (recorded CANCELLED), or with `drain` let them finish; wait for them all."""
        hosted = list(self._hosted.values())
        if not drain:
            for each in hosted:
                each.graph_run.cancel()
        await asyncio.gather(*(each.task for each in hosted), return_exceptions=True)

    async def close(self, drain: bool) -> None:
        """Stop every hosted run (`stop`), then close the runners the host kept: nothing it started is left."""
        await self.stop(drain)
        kept, self._kept = self._kept, {}
        for runners in kept.values():
            await close_runners(runners)

    def _runners_of(self, definition: tuple[str, str]) -> dict[str, AnyRunner]:
        """The runners kept for the runs of one pipeline version (or of one resumed run's own snapshot)."""
        return self._kept.setdefault(definition, {})

    def _resumed(self, run_id: str) -> str | None:
        """Close lost runs first, as every command does; the run's id if it was one and is resumed now."""
        previous = self._records.run(run_id)
        return previous.run_id if previous.run_id in self.recover() else None

    async def _opened(self, label: str, plan: RunPlan,
                      started: asyncio.Event) -> tuple[RecordedRun, dict[str, AnyRunner]]:
        """A run's graph run with runners of its own, opened: a backend that is down stops it before it starts."""
        runners: dict[str, AnyRunner] = {}
        try:
            recorded = self.recorded(label, plan, runners, started)
            await open_runners(plan.pipeline, self._runner, runners)
        except BaseException:
            await close_runners(runners)
            raise
        return recorded, runners

    async def _recorded(self, run_id: str, started: asyncio.Event) -> None:
        """Wait until a hosted run's start is in the store (or it ended without), so its id can be looked up."""
        hosted = self._hosted.get(run_id)
        if hosted is None:
            return
        seen = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({seen, hosted.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            seen.cancel()

    async def _in_store(self, run_id: str) -> None:
        """Wait, a bounded time, until the service has recorded the start of the run it said it started (it
        records the fire just before): the id returned can then be looked up."""
        deadline = time.monotonic() + SERVICE_RECORD_SECS
        while time.monotonic() < deadline:
            try:
                self._records.run(run_id)
                return
            except StoreError:
                await asyncio.sleep(POLL_SECS)

    async def _retrying(self, recorded: RecordedRun, runners: dict[str, AnyRunner],
                        give_back: Callable[[], None]) -> RunResult:
        try:
            return await drive(self._records, recorded, runners, self._say)
        except BaseException:
            give_back()
            raise

    def _host(self, recorded: RecordedRun, run: Coroutine[Any, Any, RunResult]) -> str:
        run_id = recorded.graph_run.run_id
        task = asyncio.get_running_loop().create_task(run, name=f"jobgraph run {run_id}")
        self._hosted[run_id] = _Hosted(recorded.graph_run, task)
        task.add_done_callback(lambda done: self._ended(run_id, done))
        return run_id

    def _ended(self, run_id: str, task: asyncio.Task[RunResult]) -> None:
        hosted = self._hosted.get(run_id)
        if hosted is not None and hosted.task is task:
            del self._hosted[run_id]
        if task.cancelled():
            self._say(f"run {run_id}: stopped before it ended")
        elif (exc := task.exception()) is not None:
            self._say(f"run {run_id}: {exc}")
