"""Commands that run a pipeline: run, and retry of a run's failed, skipped and cancelled jobs."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from jobgraph.cli.common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    StoreOption,
    console,
    errors,
    home,
    reported,
    silence,
    store_url,
)
from jobgraph.cli.inspect import FileArgument, RunnerOption
from jobgraph.cli.render import RunView
from jobgraph.cli.show import tasks_table
from jobgraph.config import Job, Pipeline, check_pipeline, load
from jobgraph.engine import GraphRun, PriorTask, RunResult
from jobgraph.errors import ConfigError, Problem, RunnerError, StoreError
from jobgraph.recovery import recover_lost_runs
from jobgraph.runners import AnyRunner, make_runner
from jobgraph.states import RETRYABLE_TASK_STATES, RunState, TaskState
from jobgraph.store import Store

SUMMARY_ROWS = 40
"""Past this many jobs, the closing summary lists only the jobs that did not succeed."""

EXIT_CODES = {RunState.SUCCEEDED: EXIT_OK, RunState.FAILED: EXIT_FAILED, RunState.CANCELLED: EXIT_CANCELLED}


@reported
def run(file: FileArgument, store: StoreOption = None, runner: RunnerOption = None) -> None:
    """Run a pipeline once, now, with a live view; exit 0 if every job succeeded, 1 if not, 130 if cancelled."""
    pipeline = load(file, runner)
    with Store(store_url(store)) as records:
        report_lost_runs(records)
        result = execute(pipeline, records, runner)
    raise typer.Exit(EXIT_CODES[result.state])


@reported
def retry(
    run_id: Annotated[str, typer.Argument(help="The run to retry (a unique prefix is enough)")],
    store: StoreOption = None,
    runner: RunnerOption = None,
) -> None:
    """Run again a run's failed, skipped and cancelled jobs, keeping what succeeded (EXECUTE TASK ... RETRY LAST)."""
    with Store(store_url(store)) as records:
        report_lost_runs(records)
        previous = records.run(run_id)
        if previous.state == RunState.RUNNING:
            raise StoreError(f"run {previous.run_id} is still running")
        if previous.state == RunState.SUCCEEDED:
            console.print(f"run {previous.run_id} succeeded: nothing to retry")
            raise typer.Exit(EXIT_OK)
        pipeline = check_pipeline(Pipeline.model_validate_json(previous.snapshot), f"run {previous.run_id}",
                                  runner)
        prior = {t.task: PriorTask(t.state, t.attempts, t.return_value) for t in records.tasks(previous.run_id)}
        kept = sum(1 for p in prior.values() if p.state not in RETRYABLE_TASK_STATES)
        console.print(f"retrying run {previous.run_id}: keeping {kept} succeeded jobs")
        result = execute(pipeline, records, runner, run_id=previous.run_id,
                         prior=prior, run_attempt=previous.run_attempt + 1)
    raise typer.Exit(EXIT_CODES[result.state])


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
            version: str | None = None) -> RunResult:
    """Run the graph with the store and the live view listening; Ctrl-C and SIGTERM cancel it."""
    secrets = job_secrets(pipeline)
    runners: dict[str, AnyRunner] = {}
    with RunView(console) as view:
        graph_run = GraphRun(pipeline, runner_factory(pipeline, runner_override, runners), [records, view],
                             home() / "logs", run_id=run_id, prior=prior, run_attempt=run_attempt,
                             secrets=secrets, trigger=trigger, version=version)

        async def main() -> RunResult:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, graph_run.cancel)
            loop.add_signal_handler(signal.SIGHUP, view.hang_up)
            try:
                await open_runners(pipeline, runner_override, runners)
                return await graph_run.run()
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


def report_lost_runs(records: Store) -> None:
    """Close runs whose jobgraph process died, and say so."""
    for lost in recover_lost_runs(records, home()):
        containers = f" and {lost.containers} container(s)" if lost.containers else ""
        errors.print(f"run {lost.run_id} of {lost.pipeline}: its jobgraph process died; killed "
                     f"{lost.killed} leftover process(es){containers}, marked it CANCELLED "
                     f"(`jobgraph retry {lost.run_id}` resumes it)")


def job_secrets(pipeline: Pipeline) -> dict[str, str]:
    """The values of every job's `secrets`, from jobgraph's environment; a missing one stops the run."""
    jobs = pipeline.all_jobs()
    missing = [Problem(f"secret {name} is not set in jobgraph's environment", job=job.name, field="secrets")
               for job in jobs for name in job.secrets if name not in os.environ]
    if missing:
        raise ConfigError(f"pipeline {pipeline.name}", missing)
    return {name: os.environ[name] for job in jobs for name in job.secrets}
