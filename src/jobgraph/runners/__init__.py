"""Backends that run job attempts; `make_runner` is the one place that maps a runner name to a class."""

from __future__ import annotations

from pathlib import Path

from jobgraph.config.model import Pipeline
from jobgraph.errors import RunnerError
from jobgraph.runners.base import AnyRunner, JobSpec, Outcome, Runner
from jobgraph.runners.local import LocalRunner

RUNNER_NAMES = ("local",)


def make_runner(name: str, pipeline: Pipeline, cwd: Path | None = None) -> AnyRunner:
    """The runner called `name`, set up for this pipeline."""
    if name == "local":
        return LocalRunner(pipeline.images, cwd=cwd)
    raise RunnerError(f"unknown runner {name!r}; known runners: {', '.join(RUNNER_NAMES)}")


__all__ = ["RUNNER_NAMES", "AnyRunner", "JobSpec", "LocalRunner", "Outcome", "Runner", "make_runner"]
