"""Backends that run job attempts, behind one small protocol (base.py); registry.py maps names to them."""

from __future__ import annotations

from jobgraph.runners.base import AnyRunner, JobSpec, Outcome, Runner
from jobgraph.runners.local import LocalRunner
from jobgraph.runners.registry import RUNNER_NAMES, make_runner

__all__ = ["RUNNER_NAMES", "AnyRunner", "JobSpec", "LocalRunner", "Outcome", "Runner", "make_runner"]
