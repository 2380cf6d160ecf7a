"""How the application layer speaks to people: through callbacks, never a console.

The command line prints them (rich, on stdout and stderr), the scheduler service writes timestamped
lines, the web server logs them. Each callback takes plain text, never markup.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from jobgraph.engine.events import Event

if TYPE_CHECKING:
    from jobgraph.engine.run import RunResult


class RunDisplay(Protocol):
    """A live view of one run: an engine listener that can be told its terminal went away."""

    def __call__(self, event: Event) -> None:
        """Show one event."""

    def hang_up(self) -> None:
        """The terminal is gone (SIGHUP): stop drawing, let the run go on."""


@dataclass(frozen=True)
class Reports:
    """Where messages go: `say` what is done, `warn` of what may go wrong, `error` what did, `note` what
    jobgraph did on its own (closing the runs of a dead jobgraph); `display` opens a live view per run, and
    `ended` hears of each run that `execute` ran to its end with its records written (the CLI's closing table)."""

    say: Callable[[str], None]
    warn: Callable[[str], None]
    error: Callable[[str], None]
    note: Callable[[str], None]
    display: Callable[[], AbstractContextManager[RunDisplay]] | None = None
    ended: Callable[[RunResult], None] | None = None

    @classmethod
    def plain(cls, say: Callable[[str], None]) -> Reports:
        """Every message as one line through `say`, warnings and errors prefixed so."""
        return cls(say, lambda text: say(f"warning: {text}"), lambda text: say(f"error: {text}"), say)
