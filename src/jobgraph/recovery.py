"""Runs whose orchestrator died (kill -9, a crash): kill what they left running and close their records.

`jobgraph run`, `retry`, `trigger` and `serve` call this first, so a lost run never stays RUNNING, no
job process it started outlives it for long, and `jobgraph retry RUN_ID` can resume it. What a run
left in each backend it used is removed through that backend's clean-up in the runner registry:
local job processes (the run's cgroups, which hold every process its jobs started, daemons
included, and the markers in their environment) and containers (by their run label). Attempts on
a remote runner (Slurm) are not killed: as their runner's `on_orchestrator_loss: adopt` (the
default) says, the lost run is closed but for them, and the caller resumes it
(`LostRun.adoptable`), waiting for them and recording their real end. With `cancel` they are
cancelled in their backend instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jobgraph.config import Pipeline
from jobgraph.engine import GraphRun
from jobgraph.errors import RunnerError
from jobgraph.owner import owner_is_gone
from jobgraph.runners import AnyRunner, make_runner
from jobgraph.runners.containment import remove_empty_cgroups
from jobgraph.runners.registry import BACKENDS, clean_up_lost_run, settings_for
from jobgraph.states import AttemptStatus
from jobgraph.store import Store

LOST_REASON = "orchestrator lost: the jobgraph process running this run died"


@dataclass(frozen=True)
class RemoteAttempt:
    """An attempt a lost run left in a remote backend, by the handle recorded when it was submitted."""

    task: str
    attempt: int
    runner: str
    reference: str
    started_at: datetime


@dataclass(frozen=True)
class LostRun:
    """A run that was found orphaned and closed; `killed` counts the processes it had left.

    `adoptable` are its remote attempts still to be waited for: the caller resumes the run with them.
    `cancelled` counts remote attempts cancelled in their backend (`on_orchestrator_loss: cancel`).
    """

    run_id: str
    pipeline: str
    killed: int
    containers: int = 0
    adoptable: tuple[RemoteAttempt, ...] = ()
    cancelled: int = 0


def recover_lost_runs(store: Store, folder: Path) -> list[LostRun]:
    """Close every RUNNING run whose orchestrator on this host is gone; kill its processes and containers.

    `folder` is jobgraph's own, where a Podman API service may be started to remove containers.
    """
    lost = []
    for run in store.running_runs():
        if run.owner is None or not owner_is_gone(run.owner) or not store.take_over(run):
            continue  # alive, or another process is closing it right now
        cleaned = {name: clean_up_lost_run(name, run.run_id, folder)
                   for name in sorted(runners_used(store, run.run_id, run.snapshot) | {"local"})}
        killed, containers = cleaned.pop("local"), sum(cleaned.values())
        adoptable, to_cancel = remote_attempts(store, run.run_id, run.snapshot)
        cancelled = cancel_remote(run.run_id, run.snapshot, to_cancel, folder)
        store.mark_lost(run.run_id, LOST_REASON, keep={(a.task, a.attempt) for a in adoptable})
        lost.append(LostRun(run.run_id, run.pipeline, killed, containers, tuple(adoptable), cancelled))
    remove_empty_cgroups()
    return lost


def runners_used(store: Store, run_id: str, snapshot: str) -> set[str]:
    """The runners a run used: those its stored pipeline names, and those its attempts recorded (a
    `--runner` given on the command line is only in the latter)."""
    names = {record.runner for record in store.attempts(run_id) if record.runner}
    with contextlib.suppress(ValueError):
        names |= {job.runner or "local" for job in Pipeline.model_validate_json(snapshot).all_jobs()}
    return {name for name in names if name in BACKENDS}


def remote_attempts(store: Store, run_id: str, snapshot: str) -> tuple[list[RemoteAttempt], list[RemoteAttempt]]:
    """A lost run's attempts still running on remote runners: (to adopt, to cancel), as each runner's
    `on_orchestrator_loss` says."""
    try:
        pipeline = Pipeline.model_validate_json(snapshot)
    except ValueError:
        return [], []
    adopt: list[RemoteAttempt] = []
    cancel: list[RemoteAttempt] = []
    for record in store.attempts(run_id):
        if record.status != AttemptStatus.RUNNING or not record.backend_ref or not record.runner:
            continue
        if record.runner not in BACKENDS or not BACKENDS[record.runner].remote:
            continue
        remote = RemoteAttempt(record.task, record.attempt, record.runner, record.backend_ref, record.started_at)
        settings = settings_for(record.runner, pipeline)
        (cancel if getattr(settings, "on_orchestrator_loss", "adopt") == "cancel" else adopt).append(remote)
    return adopt, cancel


def cancel_remote(run_id: str, snapshot: str, remote: list[RemoteAttempt], folder: Path) -> int:
    """Cancel remote attempts in their backend, through their runner; return how many were cancelled.

    Runs in a thread of its own, so it works whether or not the caller is inside an event loop.
    """
    if not remote:
        return 0
    pipeline = Pipeline.model_validate_json(snapshot)
    jobs = {job.name: job for job in pipeline.all_jobs()}

    async def cancel_all() -> int:
        draft = GraphRun(pipeline, lambda _job: _no_runner(), [], folder / "logs", run_id=run_id)
        runners: dict[str, AnyRunner] = {}
        done = 0
        try:
            for attempt in remote:
                if attempt.task not in jobs:
                    continue
                runner = runners.setdefault(attempt.runner, make_runner(attempt.runner, pipeline, folder))
                spec = draft.spec_for(jobs[attempt.task], attempt.attempt)
                with contextlib.suppress(RunnerError):
                    await runner.cancel(await runner.adopt(attempt.reference, spec))
                    done += 1
        finally:
            for runner in runners.values():
                await runner.aclose()
        return done

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, cancel_all()).result()


def _no_runner() -> AnyRunner:
    raise AssertionError("recovery starts no job")
