"""The `jobgraph` command: each command parses, calls the library and renders; nothing more.

The commands are declared in commands.py, which imports nothing slow; each loads its own work when it
runs. Like commands.py, this module evaluates its annotations at import (no `from __future__ import
annotations`): typer reads them on every start, and strings would have to be evaluated each time.
"""

import atexit
import contextlib
import os
import sys
import threading
from typing import Annotated

import typer

from jobgraph.cli import commands

app = typer.Typer(
    name="jobgraph",
    help="Run containerized jobs in parallel as a DAG from a config file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("jobgraph")
        except PackageNotFoundError:
            number = "unknown (not installed)"
        typer.echo(f"jobgraph {number}")
        raise typer.Exit()


@app.callback()
def _options(
    _version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                           help="Print jobgraph's version and exit")] = False,
) -> None:
    """Run containerized jobs in parallel as a DAG from a config file."""


app.command()(commands.init)
app.command()(commands.validate)
app.command()(commands.graph)
app.command()(commands.schema)
app.command()(commands.plan)
app.command()(commands.run)
app.command()(commands.retry)
app.command()(commands.cancel)
app.command()(commands.history)
app.command()(commands.show)
app.command()(commands.logs)
app.command()(commands.stats)
app.command()(commands.doctor)
app.command()(commands.deploy)
app.command()(commands.pipelines)
app.command()(commands.suspend)
app.command()(commands.resume)
app.command()(commands.trigger)
app.command()(commands.drop)
app.command()(commands.serve)
app.command()(commands.web)
app.add_typer(commands.token)
app.add_typer(commands.export)


def main() -> None:
    """Console-script entry point; once the command is over, the process ends at once (see `exit_now`)."""
    _refuse_undecodable_arguments()
    try:
        app()
    except SystemExit as end:
        if isinstance(end.code, int | None) and threading.active_count() == 1:
            exit_now(end.code or 0)
        raise


def _refuse_undecodable_arguments() -> None:
    """Exit 2 if an argument is not UTF-8: Python keeps its bytes as lone surrogates, which no store, page or
    file name jobgraph writes can hold, so a run id, pipeline, param or file given so would fail half-way."""
    for index, argument in enumerate(sys.argv[1:], 1):
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            shown = argument.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            print(f"error: argument {index} ({shown}) is not UTF-8 text; nothing was run.", file=sys.stderr)
            exit_now(2)  # common.EXIT_INVALID: common loads rich, which this check must not


def exit_now(code: int) -> None:
    """End the process without tearing down every module and object one by one, which is most of the time
    between a command's last output and its exit (0.1-0.2 s with SQLAlchemy, pydantic and rich loaded).

    Only when the command is over and no other thread runs: the atexit handlers still run, the
    standard streams are flushed, and everything else (the store) was closed by the command itself.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that went away, a stream already closed
            stream.flush()
    os._exit(code)


__all__ = ["app", "main"]
