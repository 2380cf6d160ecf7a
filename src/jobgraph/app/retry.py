"""Retrying a run: its failed, skipped and cancelled jobs run again as the same run, after a claim that makes
exactly one of several retries the one that runs it; the definition is the run's own snapshot, or a repaired
file with the same jobs and edges. A targeted retry (`--job`, Airflow's "clear") runs again the jobs named,
even succeeded ones, and with `downstream` what depends on them; every other job keeps how it ended."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jobgraph.app.reports import Reports
from jobgraph.app.runs import RunPlan, execute, job_secrets, prior_states, run_params, store_params
from jobgraph.config import Pipeline, check_pipeline, load
from jobgraph.engine.run import PriorTask, RunResult
from jobgraph.errors import ConfigError, Problem, StoreError
from jobgraph.selection import loaded, rerun, with_retry
from jobgraph.states import RETRYABLE_TASK_STATES, TERMINAL_TASK_STATES, RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.records import RunBusy, RunRecord, busy_reason


@dataclass(frozen=True)
class ClaimedRetry:
    """A run this process has claimed to retry: `previous` as it was (to give it back), the plan of its next
    attempt, where its definition comes from, and how many jobs it keeps."""

    previous: RunRecord
    claimed: RunRecord
    plan: RunPlan
    definition: str
    kept: int
    rerun: tuple[str, ...] = ()
    """The jobs a targeted retry runs again (empty: every job that did not succeed)."""

    def announce(self) -> list[str]:
        """What a person is told, a line each."""
        if self.rerun:
            shown = ", ".join(self.rerun[:20]) + (f" and {len(self.rerun) - 20} more" if len(self.rerun) > 20 else "")
            head = (f"retrying run {self.previous.run_id} of {self.previous.pipeline}: running again {shown}; "
                    f"keeping {self.kept} jobs as they ended")
        else:
            head = (f"retrying run {self.previous.run_id} of {self.previous.pipeline}: keeping {self.kept} "
                    "succeeded jobs")
        return [head, f"definition: {self.definition}"]


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


def claim_retry(records: Store, previous: RunRecord, file: Path | None, runner: str | None,
                jobs: Sequence[str] = (), downstream: bool = False, field: str = "--job") -> ClaimedRetry:
    """Check the run can be retried (it ended, other than SUCCEEDED unless `jobs` are named; its definition holds;
    the jobs named are its own; its secrets are set), then claim it; StoreError if it succeeded (and no job is
    named), is running, or another process claimed it first; ConfigError for a job name that is not the run's,
    naming `field` (the CLI's --job; the API's body says jobs)."""
    if previous.state == RunState.SUCCEEDED and not jobs:
        raise StoreError(f"run {previous.run_id} succeeded: nothing to retry")
    if previous.state == RunState.RUNNING:
        raise StoreError(f"{busy_reason(previous)}; nothing was run")
    pipeline, definition, version = rerun_definition(previous, file, runner)
    selection = loaded(previous.selection)
    named, again = rerun(pipeline, selection, jobs, downstream, previous.run_id, field) if jobs else ([], [])
    prior = prior_states(records, previous.run_id)
    keep = frozenset({TaskState.SUCCEEDED})
    if again:  # Airflow's clear: the jobs named start afresh (their attempts go on), every other one stays
        prior = {name: PriorTask(TaskState.PENDING, p.attempts) if name in again else p for name, p in prior.items()}
        keep = TERMINAL_TASK_STATES
        kept = sum(1 for name in prior if name not in again)
    else:
        kept = sum(1 for p in prior.values() if p.state not in RETRYABLE_TASK_STATES)
    secrets = job_secrets(RunPlan(pipeline, selection=selection).running())  # a missing one stops it before the claim
    # ...and so do parameters the (repaired) pipeline does not take as the run recorded them
    run_params(RunPlan(pipeline, params=store_params(previous.params)), secrets)
    try:
        claimed = records.claim_run(previous)
    except RunBusy as busy:
        raise StoreError(f"{busy}; nothing was run") from None
    if again:
        selection = with_retry(selection, claimed.run_attempt, named, downstream, again)
    plan = RunPlan(pipeline, run_id=previous.run_id, prior=prior, run_attempt=claimed.run_attempt,
                   trigger=previous.trigger or "manual", version=version, keep=keep, selection=selection,
                   params=store_params(previous.params), scheduled_time=previous.scheduled_time)
    return ClaimedRetry(previous, claimed, plan, definition, kept, tuple(again))


def release(records: Store, retry: ClaimedRetry) -> None:
    """Give the run back as it was, if its new attempt recorded nothing (it stopped before it ran)."""
    with contextlib.suppress(StoreError):
        records.release_claim(retry.claimed, retry.previous)


def run_retry(records: Store, retry: ClaimedRetry, runner: str | None, reports: Reports) -> RunResult:
    """Run a claimed retry here and now (runs.execute); one that stops before it ran gives the run back."""
    try:
        return execute(records, retry.plan, runner, reports)
    except BaseException:
        release(records, retry)
        raise
