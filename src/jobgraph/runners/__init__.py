"""Backends that run job attempts, behind one small protocol (base.py); registry.py maps names to them.

Only the protocol and the registry are imported here: a backend (local.py, container.py, slurm.py) loads
when a pipeline uses it, so checking a pipeline never starts asyncio, Docker's SDK or anything else.
"""

from __future__ import annotations

from jobgraph.runners.base import AnyRunner, JobSpec, Outcome, Runner
from jobgraph.runners.registry import RUNNER_NAMES, make_runner

__all__ = ["RUNNER_NAMES", "AnyRunner", "JobSpec", "Outcome", "Runner", "make_runner"]
