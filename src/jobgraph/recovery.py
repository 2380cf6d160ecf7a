"""Runs whose orchestrator died (kill -9, a crash): kill what they left running and close their records.

`jobgraph run` and `jobgraph retry` call this first, so a lost run never stays RUNNING, no job
process it started outlives it for long, and `jobgraph retry RUN_ID` can resume it. Job processes
are found by the containment module: the run's cgroups (which hold every process its jobs started,
daemons included), and the JOBGRAPH_RUN_ID every job gets in its environment; containers are
removed by the container runner, by their owner label, when it next connects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobgraph.config import Pipeline
from jobgraph.errors import JobgraphError
from jobgraph.owner import owner_is_gone
from jobgraph.runners.containment import kill_lost_run, remove_empty_cgroups
from jobgraph.store import Store

LOST_REASON = "orchestrator lost: the jobgraph process running this run died"


@dataclass(frozen=True)
class LostRun:
    """A run that was found orphaned and closed; `killed` counts the processes it had left."""

    run_id: str
    pipeline: str
    killed: int
    containers: int = 0


def recover_lost_runs(store: Store, folder: Path) -> list[LostRun]:
    """Close every RUNNING run whose orchestrator on this host is gone; kill its processes and containers.

    `folder` is jobgraph's own, where a Podman API service may be started to remove containers.
    """
    lost = []
    for run in store.running_runs():
        if run.owner is None or not owner_is_gone(run.owner) or not store.take_over(run):
            continue  # alive, or another process is closing it right now
        killed = kill_lost_run(run.run_id)
        containers = 0
        for engine in container_engines(run.snapshot):
            try:
                from jobgraph.runners.container import remove_run_containers

                containers += remove_run_containers(engine, folder, [run.run_id])
            except JobgraphError:
                pass  # no engine reachable: the container runner removes them when it next connects
        store.mark_lost(run.run_id, LOST_REASON)
        lost.append(LostRun(run.run_id, run.pipeline, killed, containers))
    remove_empty_cgroups()
    return lost


def container_engines(snapshot: str) -> set[str]:
    """The container engines a run's pipeline used, from its stored snapshot."""
    try:
        pipeline = Pipeline.model_validate_json(snapshot)
    except ValueError:
        return set()
    jobs = pipeline.all_jobs()
    return {job.runner for job in jobs if job.runner in ("podman", "docker")}
