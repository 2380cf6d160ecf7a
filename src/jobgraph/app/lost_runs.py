"""Runs whose jobgraph died: closed (recovery.py) and said so; those that left remote attempts are claimed by
exactly one jobgraph and resumed, their attempts adopted and the rest of the run gone on with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jobgraph.app.places import home
from jobgraph.app.reports import Reports
from jobgraph.app.runs import ENDED_BEFORE_THE_CRASH, RunPlan, execute, prior_states, store_params
from jobgraph.config import Pipeline, check_pipeline
from jobgraph.engine.attempt import Adoption
from jobgraph.engine.run import PriorTask, RunResult
from jobgraph.recovery import LostRun, recover_lost_runs
from jobgraph.selection import loaded
from jobgraph.store import Store
from jobgraph.store.records import RunBusy, RunRecord


def report_lost_runs(records: Store, note: Callable[[str], None]) -> list[LostRun]:
    """Close runs whose jobgraph process died and say so; those with remote attempts to adopt are to resume."""
    lost_runs = recover_lost_runs(records, home())
    for lost in lost_runs:
        containers = f" and {lost.containers} container(s)" if lost.containers else ""
        remote = f", cancelled {lost.cancelled} remote attempt(s)" if lost.cancelled else ""
        if lost.adoptable:
            still = ", ".join(f"{a.task} attempt {a.attempt} ({a.runner} {a.reference})" for a in lost.adoptable)
            note(f"run {lost.run_id} of {lost.pipeline}: its jobgraph process died; killed {lost.killed} "
                 f"leftover process(es){containers}{remote}; adopting what still runs remotely: {still}")
        else:
            note(f"run {lost.run_id} of {lost.pipeline}: its jobgraph process died; killed "
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

    def plan(self) -> RunPlan:
        """How it goes on: adopted attempts waited for, jobs that had ended kept as they ended, and only what
        the crash cut short run."""
        return RunPlan(self.pipeline, run_id=self.previous.run_id, prior=self.prior, run_attempt=self.run_attempt,
                       trigger=self.previous.trigger or "manual", version=self.previous.version, adopt=self.adopt,
                       keep=ENDED_BEFORE_THE_CRASH, params=store_params(self.previous.params),
                       scheduled_time=self.previous.scheduled_time, selection=loaded(self.previous.selection))

    def announce(self) -> str:
        """What a person is told."""
        return (f"resuming run {self.previous.run_id} of {self.previous.pipeline}, adopting "
                f"{len(self.adopt)} remote attempt(s)")


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


def resume_adopting(records: Store, reports: Reports) -> dict[str, RunResult]:
    """Close lost runs, then resume here and now each that left remote attempts: wait for them (their real end is
    recorded) and go on with the rest of the run. Return how each resumed run ended."""
    results = {}
    for resumption in claim_resumptions(records, report_lost_runs(records, reports.note)):
        reports.say(resumption.announce())
        results[resumption.previous.run_id] = execute(records, resumption.plan(), None, reports)
    return results
