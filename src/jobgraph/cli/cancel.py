"""`jobgraph cancel`: ask the process that runs a run, through the store, to cancel it; say how it ended."""

from __future__ import annotations

import getpass
import os
import socket

import typer
from rich.markup import escape

from jobgraph.app.cancel import ANSWER_SECS, cancel_run, wait_ended
from jobgraph.cli.common import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, console, errors, home, reported, store_url
from jobgraph.states import RunState
from jobgraph.store import RunRecord, Store


@reported
def cancel(run_id: str, wait: bool = True, store: str | None = None) -> None:
    """Record the request (or close the run if its jobgraph died); with `wait`, wait for the run's end and say it."""
    with Store(store_url(store)) as records:
        run = cancel_run(records, run_id, requester(), folder=home(), say=_tell)
        console.print(f"run {run.run_id} of {escape(run.pipeline)}: cancel requested by "
                      f"{escape(run.cancel_requested_by or '-')}{_at(run)}")
        if run.state == RunState.RUNNING and not wait:
            console.print(f"its jobgraph process ({escape(run.owner or '-')}) cancels it at its next look at the "
                          f"store; `jobgraph show {run.run_id}` tells when it has ended")
            raise typer.Exit(EXIT_OK)
        if run.state == RunState.RUNNING:
            console.print(f"waiting for its jobgraph process ({escape(run.owner or '-')}) to cancel it")
            try:
                run = wait_ended(records, run.run_id, folder=home(), say=_tell)
            except KeyboardInterrupt:
                errors.print("stopped waiting; the request stays recorded and the run's owner acts on it")
                raise typer.Exit(EXIT_CANCELLED) from None
    if run.state == RunState.RUNNING:
        errors.print(f"[red]error:[/red] run {run.run_id} is still running {ANSWER_SECS:g}s after the request: its "
                     f"jobgraph process ({escape(run.owner or '-')}) has not answered (it may be on another host, "
                     "stopped, or busy). The request stays recorded: it cancels the run as soon as it looks; "
                     f"`jobgraph show {run.run_id}` tells when it has ended")
        raise typer.Exit(EXIT_FAILED)
    ended = f" at {run.finished_at:%Y-%m-%d %H:%M:%S} UTC" if run.finished_at else ""
    before = "" if run.state == RunState.CANCELLED else " (it ended before its jobgraph process acted on the request)"
    console.print(f"run {run.run_id} ended {run.state}{ended}{before}")


def requester() -> str:
    """Who asks, as the run's record keeps it: the user, the host, and this command."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment nor in the password database
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()} (jobgraph cancel, pid {os.getpid()})"


def _at(run: RunRecord) -> str:
    return f" at {run.cancel_requested_at:%Y-%m-%d %H:%M:%S} UTC" if run.cancel_requested_at else ""


def _tell(text: str) -> None:
    errors.print(escape(text))
