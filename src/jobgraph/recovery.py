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
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobgraph.config import Pipeline
from jobgraph.engine import AttemptEnded
from jobgraph.engine.fan_out import job_named
from jobgraph.engine.run import GraphRun
from jobgraph.errors import JobgraphError, RunnerError
from jobgraph.owner import owner_is_gone
from jobgraph.runners import AnyRunner, JobSpec, make_runner
from jobgraph.runners.cgroups import remove_empty_cgroups
from jobgraph.runners.registry import BACKENDS, clean_up_lost_run, settings_for
from jobgraph.states import AttemptStatus
from jobgraph.store import RunRecord, Store
from jobgraph.template import TemplateError

CANCEL_WAIT_SECS = 120.0
"""How long recovery waits for a remote attempt it cancelled to be seen ended in its backend."""

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
    lost = [closed for run in store.running_runs() if (closed := recover_lost_run(store, run, folder)) is not None]
    remove_empty_cgroups()
    return lost


def recover_lost_run(store: Store, run: RunRecord, folder: Path, reason: str = LOST_REASON,
                     adopt: bool = True) -> LostRun | None:
    """Close one RUNNING run if its orchestrator on this host is gone (None if it is alive, or another
    process is closing it); with `adopt` False, its remote attempts are all cancelled, none kept to adopt
    (a cancel request: the user wants all of it stopped). The caller removes the emptied cgroups."""
    if run.owner is None or not owner_is_gone(run.owner) or not store.take_over(run):
        return None
    cleaned = {name: clean_up_lost_run(name, run.run_id, folder)
               for name in sorted(runners_used(store, run.run_id, run.snapshot) | {"local"})}
    killed, containers = cleaned.pop("local"), sum(cleaned.values())
    adoptable, to_cancel = remote_attempts(store, run.run_id, run.snapshot, folder)
    if not adopt:
        adoptable, to_cancel = [], adoptable + to_cancel
    cancelled = cancel_remote(store, run.run_id, run.snapshot, to_cancel, folder)
    store.mark_lost(run.run_id, reason, keep={(a.task, a.attempt) for a in adoptable})
    return LostRun(run.run_id, run.pipeline, killed, containers, tuple(adoptable), cancelled)


def runners_used(store: Store, run_id: str, snapshot: str) -> set[str]:
    """The runners a run used: those its stored pipeline names, and those its attempts recorded (a
    `--runner` given on the command line is only in the latter)."""
    names = {record.runner for record in store.attempts(run_id) if record.runner}
    with contextlib.suppress(ValueError):
        names |= {job.runner or "local" for job in Pipeline.model_validate_json(snapshot).all_jobs()}
    return {name for name in names if name in BACKENDS}


def remote_attempts(store: Store, run_id: str, snapshot: str,
                    folder: Path) -> tuple[list[RemoteAttempt], list[RemoteAttempt]]:
    """A lost run's attempts still running on remote runners: (to adopt, to cancel), as each runner's
    `on_orchestrator_loss` says. An attempt whose handle was never recorded (jobgraph died between the
    backend taking it and the record) is looked for in its backend, by the tag it was submitted with."""
    try:
        pipeline = Pipeline.model_validate_json(snapshot)
    except ValueError:
        return [], []
    jobs = {job.name: job for job in pipeline.all_jobs()}
    found: list[RemoteAttempt] = []
    unnamed: list[tuple[str, int, str, datetime]] = []
    for record in store.attempts(run_id):
        if record.status != AttemptStatus.RUNNING:
            continue
        job = job_named(jobs, record.task)
        name = record.runner or (job.runner if job is not None else None) or "local"
        if name not in BACKENDS or not BACKENDS[name].remote:
            continue
        if record.backend_ref:
            found.append(RemoteAttempt(record.task, record.attempt, name, record.backend_ref, record.started_at))
        else:
            unnamed.append((record.task, record.attempt, name, record.started_at))
    if unnamed:
        found += _in_backend(run_id, pipeline, folder, lambda runner, spec: getattr(runner, "find", _nothing)(spec),
                             unnamed, run_params(store, run_id))
    adopt: list[RemoteAttempt] = []
    cancel: list[RemoteAttempt] = []
    for remote in found:
        settings = settings_for(remote.runner, pipeline)
        (cancel if getattr(settings, "on_orchestrator_loss", "adopt") == "cancel" else adopt).append(remote)
    return adopt, cancel


def cancel_remote(store: Store, run_id: str, snapshot: str, remote: list[RemoteAttempt], folder: Path) -> int:
    """Cancel remote attempts in their backend, through their runner, and record how each really ended (one
    that had finished while no jobgraph watched keeps its real end and exit code); return how many."""
    if not remote:
        return 0
    ended: list[AttemptEnded] = []

    async def cancel(runner: AnyRunner, spec: JobSpec, reference: str, started_at: datetime) -> str | None:
        handle = await runner.adopt(reference, spec)
        await runner.cancel(handle)
        try:
            outcome = await asyncio.wait_for(runner.wait(handle), CANCEL_WAIT_SECS)
        except TimeoutError:  # not seen ended: recorded CANCELLED with the rest of the lost run
            return reference
        ended.append(AttemptEnded(run_id, spec.task, spec.attempt, outcome.status, started_at,
                                  outcome.ended_at or datetime.now(UTC), outcome.exit_code, outcome.error,
                                  spec.log_path))
        return reference

    pipeline = Pipeline.model_validate_json(snapshot)
    targets = [(a.task, a.attempt, a.runner, a.started_at, a.reference, a.started_at) for a in remote]
    closed = _in_backend(run_id, pipeline, folder, cancel, targets, run_params(store, run_id))
    for event in ended:
        with contextlib.suppress(JobgraphError):
            store.record(event)
    return len(closed)


def run_params(store: Store, run_id: str) -> dict[str, object]:
    """The parameter values a run ran with (runs.params), so its jobs' specs are built again as they were."""
    text = store.run(run_id).params
    return {} if not text else dict(json.loads(text))


def _in_backend(run_id: str, pipeline: Pipeline, folder: Path, act: Callable[..., Awaitable[str | None]],
                attempts: list[tuple[Any, ...]], params: dict[str, object] | None = None) -> list[RemoteAttempt]:
    """Do `act(runner, spec, *rest)` for each (task, attempt, runner, started_at, *rest) through its
    runner; return those for which it gave a handle. Runs in a thread of its own, so it works whether or
    not the caller is inside an event loop."""
    jobs = {job.name: job for job in pipeline.all_jobs()}

    async def each() -> list[RemoteAttempt]:
        draft = GraphRun.draft(pipeline, folder / "logs", run_id, params=params)
        runners: dict[str, AnyRunner] = {}
        done = []
        try:
            for task, attempt, name, started_at, *rest in attempts:
                job = job_named(jobs, task)
                if job is None:
                    continue
                runner = runners.setdefault(name, make_runner(name, pipeline, folder))
                with contextlib.suppress(RunnerError, TemplateError):
                    reference = await act(runner, draft.spec_for(job, attempt), *rest)
                    if reference:
                        done.append(RemoteAttempt(task, attempt, name, reference, started_at))
        finally:
            for runner in runners.values():
                await runner.aclose()
        return done

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, each()).result()


async def _nothing(_spec: JobSpec) -> str | None:
    return None
