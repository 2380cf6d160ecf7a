"""What every command shares: where the store and logs live, and how errors reach the user."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from typing import IO, ParamSpec, TextIO, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from jobgraph.app.places import home, store_url
from jobgraph.errors import ConfigError, JobgraphError
from jobgraph.states import RunState

__all__ = ["EXIT_CANCELLED", "EXIT_FAILED", "EXIT_INVALID", "EXIT_OK", "console", "errors", "home", "reported",
           "reported_as", "silence", "store_url", "write_plain"]

P = ParamSpec("P")
R = TypeVar("R")


def _width(stream: TextIO) -> int | None:
    """Rich's own width on a terminal; wide enough for the stats tables when piped or captured."""
    return None if stream.isatty() else int(os.environ.get("COLUMNS", "200"))


console = Console(highlight=False, width=_width(sys.stdout))
errors = Console(stderr=True, highlight=False, width=_width(sys.stderr))

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 130

EXIT_CODES = {RunState.SUCCEEDED: EXIT_OK, RunState.FAILED: EXIT_FAILED, RunState.CANCELLED: EXIT_CANCELLED}
"""A run's end as the exit code of the command that ran or watched it (`run`, `retry`, `trigger --wait`,
`show --watch`)."""


def silence(*streams: IO[str]) -> None:
    """Point streams whose reader went away (a closed pipe, a closed terminal) at /dev/null.

    Later writes, and Python's flush at exit, then succeed quietly: the output stops, the work goes on.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in streams:
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def write_plain(text: str) -> None:
    """Machine-readable output goes to stdout as is: never wrapped at the terminal's width, never styled."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def reported(command: Callable[P, R]) -> Callable[P, R]:
    """Turn jobgraph's errors into a message on stderr and exit code 2: never a traceback."""
    return reported_as("nothing was run.")(command)


def reported_as(nothing: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """`reported`, saying `nothing` after a bad file's problems in the command's own words (a failed deploy
    deployed nothing: "nothing was run" would leave a reader wondering)."""

    def decorate(command: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(command)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return command(*args, **kwargs)
            except ConfigError as exc:
                for line in str(exc).splitlines():
                    errors.print(f"[red]error:[/red] {escape(line)}")
                errors.print(nothing)
                raise typer.Exit(EXIT_INVALID) from None
            except JobgraphError as exc:
                errors.print(f"[red]error:[/red] {escape(str(exc))}")
                raise typer.Exit(EXIT_INVALID) from None

        return wrapper

    return decorate
