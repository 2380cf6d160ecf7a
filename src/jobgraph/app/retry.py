"""Retrying a run: its failed, skipped and cancelled jobs run again as the same run, after a claim that makes
exactly one of several retries the one that runs it; the definition is the run's own snapshot, or a repaired
file with the same jobs and edges."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from jobgraph.app.reports import Reports
from jobgraph.app.runs import RunPlan, execute, job_secrets, prior_states, run_params, store_params
from jobgraph.config import Pipeline, check_pipeline, load
from jobgraph.engine.run import RunResult
from jobgraph.errors import ConfigError, Problem, StoreError
from jobgraph.states import RETRYABLE_TASK_STATES, RunState
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

    def announce(self) -> list[str]:
        """What a person is told, a line each."""
        return [f"retrying run {self.previous.run_id} of {self.previous.pipeline}: keeping {self.kept} succeeded jobs",
                f"definition: {self.definition}"]


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


def claim_retry(records: Store, previous: RunRecord, file: Path | None, runner: str | None) -> ClaimedRetry:
    """Check the run can be retried (it ended other than SUCCEEDED, its definition holds, its secrets are set),
    then claim it; StoreError if it succeeded, is running, or another process claimed it first."""
    if previous.state == RunState.SUCCEEDED:
        raise StoreError(f"run {previous.run_id} succeeded: nothing to retry")
    if previous.state == RunState.RUNNING:
        raise StoreError(f"{busy_reason(previous)}; nothing was run")
    pipeline, definition, version = rerun_definition(previous, file, runner)
    secrets = job_secrets(pipeline)  # a missing secret stops the retry before it claims the run
    # ...and so do parameters the (repaired) pipeline does not take as the run recorded them
    run_params(RunPlan(pipeline, params=store_params(previous.params)), secrets)
    prior = prior_states(records, previous.run_id)
    kept = sum(1 for p in prior.values() if p.state not in RETRYABLE_TASK_STATES)
    try:
        claimed = records.claim_run(previous)
    except RunBusy as busy:
        raise StoreError(f"{busy}; nothing was run") from None
    plan = RunPlan(pipeline, run_id=previous.run_id, prior=prior, run_attempt=claimed.run_attempt,
                   trigger=previous.trigger or "manual", version=version, params=store_params(previous.params),
                   scheduled_time=previous.scheduled_time)
    return ClaimedRetry(previous, claimed, plan, definition, kept)


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
