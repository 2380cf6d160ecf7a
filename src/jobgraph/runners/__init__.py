"""Backends that run job attempts; `make_runner` is the one place that maps a runner name to a class."""

from __future__ import annotations

from pathlib import Path

from jobgraph.config.model import Pipeline
from jobgraph.config.validate import RUNNER_NAMES
from jobgraph.errors import RunnerError
from jobgraph.runners.base import AnyRunner, JobSpec, Outcome, Runner
from jobgraph.runners.local import LocalRunner


def make_runner(name: str, pipeline: Pipeline, folder: Path, cwd: Path | None = None) -> AnyRunner:
    """The runner called `name`, set up for this pipeline; `folder` is jobgraph's own (sockets, state)."""
    if name == "local":
        return LocalRunner(pipeline.images, cwd=cwd)
    if name in ("podman", "docker"):
        from jobgraph.runners.container import ContainerRunner

        return ContainerRunner(name, folder, pipeline.container_images, cwd=cwd)
    raise RunnerError(f"unknown runner {name!r}; the runners are {', '.join(RUNNER_NAMES)}")


__all__ = ["RUNNER_NAMES", "AnyRunner", "JobSpec", "LocalRunner", "Outcome", "Runner", "make_runner"]
