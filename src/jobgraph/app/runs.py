"""Running a pipeline: the graph run wired to its recorder, its runners chosen and opened, its secrets
read from jobgraph's environment, how long it waits for a store that went down.

`recorded_run` is the one place where a graph run is built, for every way one starts (`jobgraph run`,
retry, trigger, a resumed lost run, the scheduler service's runs, a RunHost), and `drive` is where a run
built for `execute` or a RunHost starts, watched for a cancel requested through the store (the scheduler
service watches the runs its scheduler starts itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from jobgraph.app.cancel import watched
from jobgraph.app.places import home
from jobgraph.app.reports import Reports, RunDisplay
from jobgraph.config import Job, Pipeline
from jobgraph.config.params import resolve, secret_problems
from jobgraph.engine import Listener
from jobgraph.engine.attempt import Adoption
from jobgraph.engine.run import GraphRun, PriorTask, RunResult
from jobgraph.errors import ConfigError, Problem, RunnerError, StoreError
from jobgraph.runners import AnyRunner, make_runner
from jobgraph.selection import restricted, selected_jobs
from jobgraph.states import TaskState
from jobgraph.store import Store
from jobgraph.store.faults import store_name
from jobgraph.store.recorder import PATIENCE_SECS, RunRecorder

if TYPE_CHECKING:
    from jobgraph.app.notify import Notifier

ENDED_BEFORE_THE_CRASH = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED})
"""What resuming a lost run keeps as it was: jobs that had ended before its jobgraph died (a failure is
not retried unless someone asks, with `jobgraph retry`)."""


@dataclass(frozen=True)
class RunPlan:
    """What to run, and as which run: a new one, the next attempt of a run (a retry: `prior`), or a lost run
    going on (`adopt` its remote attempts, `keep` what had ended)."""

    pipeline: Pipeline
    run_id: str | None = None
    prior: Mapping[str, PriorTask] | None = None
    run_attempt: int = 1
    trigger: str = "manual"
    version: str | None = None
    adopt: Mapping[str, Adoption] | None = None
    keep: frozenset[TaskState] = frozenset({TaskState.SUCCEEDED})
    scheduled_time: datetime | None = None
    params: Mapping[str, object] | None = None
    """The parameter values given for the run (`--param`, the API's body); unset ones take their defaults."""
    selection: Mapping[str, object] | None = None
    """A partial run's jobs, or a targeted retry's (jobgraph.selection); None: every job."""

    def running(self) -> Pipeline:
        """The pipeline as far as this run runs it: its selected jobs (whose secrets and runners it needs)."""
        if self.selection is None:
            return self.pipeline
        return self.pipeline.model_copy(update={"jobs": restricted(self.pipeline, selected_jobs(self.selection))})


@dataclass(frozen=True)
class RecordedRun:
    """A graph run and the recorder that writes it to the store (flushed again while a service lives), and
    the notifier that sends its `notify` entries, if it has any."""

    graph_run: GraphRun
    recorder: RunRecorder
    notifier: Notifier | None = None


def job_secrets(pipeline: Pipeline) -> dict[str, str]:
    """The values of every job's `secrets`, from jobgraph's environment; a missing one stops the run."""
    jobs = pipeline.all_jobs()
    missing = [Problem(f"secret {name} is not set in jobgraph's environment", job=job.name, field="secrets")
               for job in jobs for name in job.secrets if name not in os.environ]
    if missing:
        raise ConfigError(f"pipeline {pipeline.name}", missing)
    return {name: os.environ[name] for job in jobs for name in job.secrets}


def run_params(plan: RunPlan, secrets: Mapping[str, str]) -> dict[str, object]:
    """Every parameter's value for the plan's run, checked against its type; ConfigError (nothing runs) for an
    unknown or badly typed one, one with no value, or one that holds a secret's value (params are recorded)."""
    values = resolve(plan.pipeline, plan.params, f"pipeline {plan.pipeline.name}")
    problems = secret_problems(values, secrets)
    if problems:
        raise ConfigError(f"pipeline {plan.pipeline.name}", problems)
    return values


def store_params(text: str | None) -> dict[str, object] | None:
    """A run's recorded parameter values (runs.params), to run it again with them (a retry, a resumption)."""
    return None if not text else dict(json.loads(text))


def store_patience() -> float:
    """Seconds a run waits for its store to come back before it is cancelled: JOBGRAPH_STORE_PATIENCE."""
    text = os.environ.get("JOBGRAPH_STORE_PATIENCE")
    if text is None:
        return PATIENCE_SECS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:
        raise ConfigError("environment", [Problem(f"{text!r} is not a number of seconds from 0 to 86400",
                                                  field="JOBGRAPH_STORE_PATIENCE")])
    return seconds


def runner_factory(pipeline: Pipeline, runner_override: str | None,
                   runners: dict[str, AnyRunner]) -> Callable[[Job], AnyRunner]:
    """Pick each job's runner by name, making each runner once; the caller closes them."""

    def runner_for(job: Job) -> AnyRunner:
        name = runner_override or job.runner or "local"
        if name not in runners:
            runners[name] = make_runner(name, pipeline, home(), cwd=Path.cwd())
        return runners[name]

    return runner_for


async def open_runners(pipeline: Pipeline, runner_override: str | None, runners: dict[str, AnyRunner]) -> None:
    """Connect every runner the pipeline uses before anything runs: a backend that is down stops the run here."""
    runner_for = runner_factory(pipeline, runner_override, runners)
    for job in pipeline.all_jobs():
        runner_for(job)
    for name, runner in runners.items():
        try:
            await runner.open()
        except RunnerError as exc:
            raise RunnerError(f"runner {name}: {exc}; nothing was run") from None


async def close_runners(runners: dict[str, AnyRunner]) -> None:
    """Release every runner made for a run (or a service)."""
    for runner in runners.values():
        await runner.aclose()


def prior_states(records: Store, run_id: str) -> dict[str, PriorTask]:
    """How each job of a run stands, as the next attempt of that run (a retry, a resumption) starts from it."""
    return {t.task: PriorTask(t.state, t.attempts, t.return_value, t.item) for t in records.settled_tasks(run_id)}


def recorded_run(records: Store, plan: RunPlan, runner_for: Callable[[Job], AnyRunner],
                 listeners: Sequence[Listener], on_down: Callable[[str], None], on_wait: Callable[[str], None],
                 patience: float, secrets: Mapping[str, str] | None = None) -> RecordedRun:
    """The graph run of a plan, recorded through a RunRecorder ahead of `listeners`: the recorder waits out a
    store fault for `patience` seconds (saying so through `on_wait`), else says why through `on_down` and
    cancels the run between engine steps, as a signal would. Every graph run jobgraph starts is built here."""
    cancel: list[Callable[[], None]] = []

    def down(message: str) -> None:
        asyncio.get_running_loop().call_soon(cancel[0])
        on_down(message)

    secrets = job_secrets(plan.running()) if secrets is None else secrets
    params = run_params(plan, secrets)
    recorder = RunRecorder(records, down, on_wait, patience)
    secrets = job_secrets(plan.running()) if secrets is None else secrets
    notifier = None
    if plan.pipeline.notify:  # only a pipeline that notifies loads the notifier
        from jobgraph.app.notify import Notifier

        notifier = Notifier(records, plan.pipeline, on_wait, frozenset(secrets.values()))
        listeners = [*listeners, notifier]
        secrets = {**notifier.secret_env, **secrets}  # withheld from every job's environment, redacted from logs
    graph_run = GraphRun(plan.pipeline, runner_for, [recorder, *listeners], home() / "logs", run_id=plan.run_id,
                         scheduled_time=plan.scheduled_time, prior=plan.prior, run_attempt=plan.run_attempt,
                         secrets=secrets, trigger=plan.trigger, version=plan.version, adopt=plan.adopt,
                         keep=plan.keep, params=params, selection=plan.selection)
    cancel.append(graph_run.cancel)
    return RecordedRun(graph_run, recorder, notifier)


async def drive(records: Store, recorded: RecordedRun, owned: dict[str, AnyRunner], say: Callable[[str], None],
                warn: Callable[[str], None] | None = None) -> RunResult:
    """Run a recorded run to its end, cancelling it if someone asks through the store (app.cancel: `say` tells
    who asked), then close the runners it `owned` (a service's shared runners are not). Every run that
    `execute` or a RunHost starts goes through here."""
    try:
        return await watched(records, recorded.graph_run, say, warn)
    finally:
        await close_runners(owned)


def execute(records: Store, plan: RunPlan, runner_override: str | None, reports: Reports) -> RunResult:
    """Run the plan here and now, in its own event loop, with the store and a live view listening; Ctrl-C and
    SIGTERM cancel it, so does a store that stays down. Raise StoreError if some of its records stayed unwritten."""
    secrets = job_secrets(plan.running())
    patience = store_patience()
    runners: dict[str, AnyRunner] = {}
    display: contextlib.AbstractContextManager[RunDisplay | None] = (
        reports.display() if reports.display is not None else contextlib.nullcontext())
    with display as view:
        recorded = recorded_run(records, plan, runner_factory(plan.pipeline, runner_override, runners),
                                [] if view is None else [view], reports.error, reports.warn, patience, secrets)
        graph_run = recorded.graph_run

        async def main() -> RunResult:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, graph_run.cancel)
            if view is not None:
                loop.add_signal_handler(signal.SIGHUP, view.hang_up)
            try:
                try:
                    await open_runners(plan.running(), runner_override, runners)
                except BaseException:
                    await close_runners(runners)
                    raise
                try:
                    return await drive(records, recorded, runners, reports.note, reports.warn)
                finally:
                    if recorded.notifier is not None:  # this loop ends with the run: pending sends get their timeout
                        await recorded.notifier.settle()
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    loop.remove_signal_handler(sig)

        result = asyncio.run(main())
        if view is not None:  # still inside the view: ignore SIGHUP while it closes and the summary prints
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for listener, exc in graph_run.listener_failures:
        if listener is not view:
            reports.error(f"{exc}; the run was stopped")
    if recorded.recorder.unwritten:
        raise StoreError(f"run {result.run_id} ended {result.state}, but {recorded.recorder.unwritten} of its records "
                         f"could not be written to the store {store_name(records.url)}. Once the store is back, "
                         f"`jobgraph retry {result.run_id}` (or any `jobgraph run`) closes its records, and the retry "
                         "resumes it")
    if reports.ended is not None:
        reports.ended(result)
    return result
