"""Backends that run job attempts, behind one small protocol (base.py); registry.py maps names to them.

The local runner (and the asyncio it needs) is imported when first asked for, so reading a pipeline,
which checks runner names through this package, does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobgraph.runners.base import AnyRunner, JobSpec, Outcome, Runner
from jobgraph.runners.registry import RUNNER_NAMES, make_runner

if TYPE_CHECKING:
    from jobgraph.runners.local import LocalRunner

__all__ = ["RUNNER_NAMES", "AnyRunner", "JobSpec", "LocalRunner", "Outcome", "Runner", "make_runner"]


def __getattr__(name: str) -> Any:
    if name == "LocalRunner":
        from jobgraph.runners.local import LocalRunner

        return LocalRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
