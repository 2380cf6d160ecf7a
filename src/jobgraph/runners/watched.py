"""The attempts a remote runner follows (Slurm, Kubernetes, SPCS), each by its backend name with the future
its `wait` awaits.

The three runners kept the same books and had each written them out: an attempt's outcome is set once,
by whichever of the poller, a cancel or a failure gets there first, and the attempt is then no longer
followed; closing the runner fails every attempt still followed, whose job goes on in the backend for
the next jobgraph to adopt. Here they are once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, TypeVar

from jobgraph.errors import RunnerError
from jobgraph.runners.base import Outcome
from jobgraph.states import AttemptStatus


class Followed(Protocol):
    """A remote runner's handle: the outcome its `wait` awaits."""

    @property
    def outcome(self) -> asyncio.Future[Outcome]: ...


H = TypeVar("H", bound=Followed)


class Watched(dict[str, H]):
    """The handles a runner follows, by their backend name (`key` of a handle)."""

    def __init__(self, key: Callable[[H], str]) -> None:
        super().__init__()
        self._key = key

    def resolve(self, handle: H, outcome: Outcome) -> None:
        """The attempt ended as `outcome` (unless it already had an outcome): it is no longer followed."""
        key = self._key(handle)
        if self.get(key) is handle:
            del self[key]
        if not handle.outcome.done():
            handle.outcome.set_result(outcome)

    def fail_all(self, error: str) -> None:
        """Every attempt followed ends as an ERROR saying `error`: following them failed (a bug must reach the
        waiters, not hang them)."""
        for handle in list(self.values()):
            self.resolve(handle, Outcome(AttemptStatus.ERROR, None, error))

    def abandon(self, why: str) -> None:
        """The runner closes: every attempt still followed fails with RunnerError(`why`); none is followed."""
        for handle in self.values():
            if not handle.outcome.done():
                handle.outcome.set_exception(RunnerError(why))
                handle.outcome.exception()  # retrieved: nobody may be waiting
        self.clear()
