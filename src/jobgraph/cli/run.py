"""Commands that run a pipeline: run, and retry of a run's failed, skipped and cancelled jobs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from jobgraph.app.cancel import watched
from jobgraph.cli.common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    console,
    errors,
    home,
    reported,
    silence,
    store_url,
)
from jobgraph.cli.render import RunView
from jobgraph.cli.show import tasks_table
from jobgraph.config import Job, Pipeline, check_pipeline, load
from jobgraph.engine import Listener
from jobgraph.engine.run import Adoption, GraphRun, PriorTask, RunResult
from jobgraph.errors import ConfigError, Problem, RunnerError, StoreError
from jobgraph.recovery import LostRun, recover_lost_runs
from jobgraph.runners import AnyRunner, make_runner
from jobgraph.states import RETRYABLE_TASK_STATES, RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.faults import store_name
from jobgraph.store.recorder import PATIENCE_SECS, RunRecorder
from jobgraph.store.records import RunBusy, RunRecord, busy_reason

ENDED_BEFORE_THE_CRASH = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED})
"""What resuming a lost run keeps as it was: jobs that had ended before its jobgraph died (a failure is
not retried unless someone asks, with `jobgraph retry`)."""

SUMMARY_ROWS = 40
"""Past this many jobs, the closing summary lists only the jobs that did not succeed."""

EXIT_CODES = {RunState.SUCCEEDED: EXIT_OK, RunState.FAILED: EXIT_FAILED, RunState.CANCELLED: EXIT_CANCELLED}


@reported
def run(file: Path, store: str | None = None, runner: str | None = None) -> None:
    """Resume what lost runs left running remotely, then run the pipeline; the exit code says how it ended."""
    pipeline = load(file, runner)
    with Store(store_url(store)) as records:
        resume_adopting(records, report_lost_runs(records))
        result = execute(pipeline, records, runner)
    raise typer.Exit(EXIT_CODES[result.state])


@reported
def retry(run_id: str, store: str | None = None, runner: str | None = None, file: Path | None = None) -> None:
    """Claim the run (so that of several retries exactly one runs it), then run what did not succeed, as the same
    run; a run whose jobgraph died is resumed instead."""
    with Store(store_url(store)) as records:
        resumed = resume_adopting(records, report_lost_runs(records))
        previous = records.run(run_id)
        if previous.run_id in resumed:  # its jobgraph had died: going on with it was what this retry did
            raise typer.Exit(EXIT_CODES[resumed[previous.run_id].state])
        if previous.state == RunState.SUCCEEDED:
            console.print(f"run {previous.run_id} succeeded: nothing to retry")
            raise typer.Exit(EXIT_OK)
        if previous.state == RunState.RUNNING:
            raise StoreError(f"{busy_reason(previous)}; nothing was run")
        pipeline, definition, version = rerun_definition(previous, file, runner)
        job_secrets(pipeline)  # a missing secret stops the retry before it claims the run
        prior = prior_states(records, previous.run_id)
        kept = sum(1 for p in prior.values() if p.state not in RETRYABLE_TASK_STATES)
        try:
            claimed = records.claim_run(previous)
        except RunBusy as busy:
            raise StoreError(f"{busy}; nothing was run") from None
        console.print(f"retrying run {previous.run_id} of {escape(previous.pipeline)}: keeping {kept} succeeded jobs")
        console.print(f"definition: {escape(definition)}")
        try:
            result = execute(pipeline, records, runner, run_id=previous.run_id, prior=prior,
                             run_attempt=claimed.run_attempt, trigger=previous.trigger or "manual", version=version)
        except BaseException:
            with contextlib.suppress(StoreError):  # stopped before it ran (a runner down): the run is as it was
                records.release_claim(claimed, previous)
            raise
    raise typer.Exit(EXIT_CODES[result.state])


def rerun_definition(previous: RunRecord, file: Path | None,
                     runner: str | None) -> tuple[Pipeline, str, str | None]:
    """The pipeline a retry runs, how to name it to the user, and its deployed version if it is one.

    By default the run's own stored snapshot; with a file, that file, provided it has the run's
    jobs and edges (a retry resumes the same graph, so what succeeded stays meaningful).
    """
    stored = check_pipeline(Pipeline.model_validate_json(previous.snapshot), f"run {previous.run_id}", runner)
    if file is None:
        deployed = f", pipeline version {previous.version}" if previous.version else ""
        return stored, f"the run's stored snapshot of {stored.name}{deployed}", previous.version
    repaired = load(file, runner)
    problems = graph_differences(stored, repaired, previous.run_id)
    if problems:
        raise ConfigError(str(file), problems)
    same = repaired.model_dump_json() == previous.snapshot
    version = previous.version if same else None
    return repaired, f"{file} (the run's jobs and edges{', unchanged' if same else ', repaired'})", version


def graph_differences(stored: Pipeline, repaired: Pipeline, run_id: str) -> list[Problem]:
    """Every way the repaired file's graph differs from the run's: pipeline name, jobs, edges, finalizer."""
    problems = []
    if repaired.name != stored.name:
        problems.append(Problem(f"the pipeline is {repaired.name!r} but run {run_id} is of {stored.name!r}",
                                field="name"))
    old = {job.name: job.after for job in stored.jobs}
    new = {job.name: job.after for job in repaired.jobs}
    for name in old.keys() - new.keys():
        problems.append(Problem(f"job {name!r} of run {run_id} is missing from the file", job=name))
    for name in new.keys() - old.keys():
        problems.append(Problem(f"job {name!r} is not in run {run_id}", job=name))
    for name in sorted(old.keys() & new.keys()):
        if set(old[name]) != set(new[name]):
            problems.append(Problem(f"after is {sorted(new[name])} in the file but {sorted(old[name])} in run "
                                    f"{run_id}", job=name, field="after"))
    old_finalizer = stored.finalizer.name if stored.finalizer else None
    new_finalizer = repaired.finalizer.name if repaired.finalizer else None
    if old_finalizer != new_finalizer:
        problems.append(Problem(f"the finalizer is {new_finalizer!r} in the file but {old_finalizer!r} in run "
                                f"{run_id}", field="finalizer"))
    return sorted(problems, key=lambda p: (p.job or "", p.message))


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


def execute(pipeline: Pipeline, records: Store, runner_override: str | None, run_id: str | None = None,
            prior: dict[str, PriorTask] | None = None, run_attempt: int = 1, trigger: str = "manual",
            version: str | None = None, adopt: dict[str, Adoption] | None = None,
            keep: frozenset[TaskState] = frozenset({TaskState.SUCCEEDED})) -> RunResult:
    """Run the graph with the store and the live view listening; Ctrl-C and SIGTERM cancel it, so does a lost store."""
    secrets = job_secrets(pipeline)
    runners: dict[str, AnyRunner] = {}
    cancel: list[Callable[[], None]] = []

    def store_down(message: str) -> None:
        asyncio.get_running_loop().call_soon(cancel[0])  # between engine steps, as a signal handler would
        errors.print(f"[red]error:[/red] {escape(message)}")

    def store_waits(message: str) -> None:
        errors.print(f"[yellow]warning:[/yellow] {escape(message)}")

    recorder = RunRecorder(records, store_down, store_waits, patience=store_patience())
    with RunView(console) as view:
        graph_run = GraphRun(pipeline, runner_factory(pipeline, runner_override, runners), [recorder, view],
                             home() / "logs", run_id=run_id, prior=prior, run_attempt=run_attempt,
                             secrets=secrets, trigger=trigger, version=version, adopt=adopt, keep=keep)
        cancel.append(graph_run.cancel)

        async def main() -> RunResult:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, graph_run.cancel)
            loop.add_signal_handler(signal.SIGHUP, view.hang_up)
            try:
                await open_runners(pipeline, runner_override, runners)
                return await watched(records, graph_run, lambda text: errors.print(escape(text)), store_waits)
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
                for runner in runners.values():
                    await runner.aclose()

        result = asyncio.run(main())
        # Still inside the view: the hang-up handler is gone, so ignore SIGHUP while the summary prints.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for listener, exc in graph_run.listener_failures:
        if listener is not view:
            errors.print(f"[red]error:[/red] {escape(str(exc))}; the run was stopped", markup=True)
    if recorder.unwritten:
        raise StoreError(f"run {result.run_id} ended {result.state}, but {recorder.unwritten} of its records could "
                         f"not be written to the store {store_name(records.url)}. Once the store is back, "
                         f"`jobgraph retry {result.run_id}` (or any `jobgraph run`) closes its records, and the retry "
                         "resumes it")
    try:
        console.print(summary_table(records, result))
    except OSError:
        silence(console.file)
    return result


def summary_table(records: Store, result: RunResult) -> Table:
    """The closing table; a big run shows the jobs that did not succeed first, then the others, up to a screen."""
    tasks = records.tasks(result.run_id)
    title = f"run {result.run_id}: {result.state}"
    if len(tasks) > SUMMARY_ROWS:
        counts = Counter(str(t.state).lower() for t in tasks)
        title += " (" + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + ")"
        tasks = sorted(tasks, key=lambda t: t.state == TaskState.SUCCEEDED)
        title += f"; the first {SUMMARY_ROWS}: `jobgraph show {result.run_id}` lists every job"
        tasks = tasks[:SUMMARY_ROWS]
    return tasks_table(tasks, title=title)


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


def report_lost_runs(records: Store) -> list[LostRun]:
    """Close runs whose jobgraph process died, say so, and resume those with remote attempts to adopt."""
    lost_runs = recover_lost_runs(records, home())
    for lost in lost_runs:
        containers = f" and {lost.containers} container(s)" if lost.containers else ""
        remote = f", cancelled {lost.cancelled} remote attempt(s)" if lost.cancelled else ""
        if lost.adoptable:
            still = ", ".join(f"{a.task} attempt {a.attempt} ({a.runner} {a.reference})" for a in lost.adoptable)
            errors.print(f"run {lost.run_id} of {lost.pipeline}: its jobgraph process died; killed {lost.killed} "
                         f"leftover process(es){containers}{remote}; adopting what still runs remotely: {still}")
        else:
            errors.print(f"run {lost.run_id} of {lost.pipeline}: its jobgraph process died; killed "
                         f"{lost.killed} leftover process(es){containers}{remote}, marked it CANCELLED "
                         f"(`jobgraph retry {lost.run_id}` resumes it)")
    return lost_runs


@dataclass(frozen=True)
class Resumption:
    """A lost run claimed by this process, to go on with: its remote attempts adopted, the rest rerun."""

    pipeline: Pipeline
    previous: RunRecord
    run_attempt: int
    prior: dict[str, PriorTask]
    adopt: dict[str, Adoption]

    def graph_run(self, runner_for: Callable[[Job], AnyRunner], listeners: list[Listener]) -> GraphRun:
        """The GraphRun that goes on with it: adopted attempts waited for, jobs that had ended kept as they
        ended, and only what the crash cut short run."""
        return GraphRun(self.pipeline, runner_for, listeners, home() / "logs", run_id=self.previous.run_id,
                        prior=self.prior, run_attempt=self.run_attempt, secrets=job_secrets(self.pipeline),
                        trigger=self.previous.trigger or "manual", version=self.previous.version, adopt=self.adopt,
                        keep=ENDED_BEFORE_THE_CRASH)

    def announce(self) -> str:
        """What a person is told."""
        return (f"resuming run {self.previous.run_id} of {self.previous.pipeline}, adopting "
                f"{len(self.adopt)} remote attempt(s)")


def prior_states(records: Store, run_id: str) -> dict[str, PriorTask]:
    """How each job of a run stands, as the next attempt of that run (a retry, a resumption) starts from it."""
    return {t.task: PriorTask(t.state, t.attempts, t.return_value) for t in records.settled_tasks(run_id)}


def claim_resumptions(records: Store, lost_runs: list[LostRun]) -> list[Resumption]:
    """Claim each lost run that left remote attempts, so that exactly one jobgraph resumes it."""
    claimed = []
    for lost in lost_runs:
        if not lost.adoptable:
            continue
        previous = records.run(lost.run_id)
        try:
            run_attempt = records.claim_run(previous).run_attempt
        except RunBusy:
            continue  # another jobgraph resumed it first
        pipeline = check_pipeline(Pipeline.model_validate_json(previous.snapshot), f"run {previous.run_id}")
        prior = prior_states(records, previous.run_id)
        adopt = {a.task: Adoption(a.attempt, a.reference, a.started_at) for a in lost.adoptable}
        claimed.append(Resumption(pipeline, previous, run_attempt, prior, adopt))
    return claimed


def resume_adopting(records: Store, lost_runs: list[LostRun]) -> dict[str, RunResult]:
    """Resume, here and now, each lost run that left remote attempts: wait for them (their real end is
    recorded) and go on with the rest of the run. Return how each resumed run ended."""
    results = {}
    for resumption in claim_resumptions(records, lost_runs):
        console.print(escape(resumption.announce()))
        previous = resumption.previous
        results[previous.run_id] = execute(
            resumption.pipeline, records, None, run_id=previous.run_id, prior=resumption.prior,
            run_attempt=resumption.run_attempt, trigger=previous.trigger or "manual", version=previous.version,
            adopt=resumption.adopt, keep=ENDED_BEFORE_THE_CRASH)
    return results


def job_secrets(pipeline: Pipeline) -> dict[str, str]:
    """The values of every job's `secrets`, from jobgraph's environment; a missing one stops the run."""
    jobs = pipeline.all_jobs()
    missing = [Problem(f"secret {name} is not set in jobgraph's environment", job=job.name, field="secrets")
               for job in jobs for name in job.secrets if name not in os.environ]
    if missing:
        raise ConfigError(f"pipeline {pipeline.name}", missing)
    return {name: os.environ[name] for job in jobs for name in job.secrets}
