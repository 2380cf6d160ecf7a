"""`jobgraph logs --follow`: print an attempt's log as it grows, and go on to the job's next attempt if it is retried.

The log is polled by offset through the shared reader (app/logs.read_log, which opens only a regular
file, never a link or a FIFO a job planted), and the attempt's state is re-read from the store each
time: the command stops once the attempt has ended and everything of it was printed.
"""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO

import typer

from jobgraph.app.logs import MAX_LOG_CHUNK, read_log
from jobgraph.app.queries import Refused
from jobgraph.cli.common import EXIT_CANCELLED, EXIT_FAILED, console, errors, silence
from jobgraph.errors import StoreError
from jobgraph.owner import owner_is_gone
from jobgraph.states import TERMINAL_TASK_STATES, AttemptStatus, RunState
from jobgraph.store import AttemptRecord, Store

POLL_SECS = 0.2
"""How often a running attempt's log and state are looked at again."""


def follow(records: Store, run_id: str, chosen: AttemptRecord, next_attempts: bool) -> None:
    """Print `chosen`'s log until it has ended; then, if `next_attempts`, each later attempt of its job in turn.

    Ctrl-C stops quietly (exit 130); a reader that leaves (`| head`) stops it quietly too (exit 0); a run
    whose jobgraph process is gone (kill -9) stops it with a note (exit 1), since its attempts never end.
    """
    try:
        current: AttemptRecord | None = chosen
        while current is not None:
            _header(current)
            _print_attempt(records, run_id, current, sys.stdout.buffer)
            current = _next_attempt(records, run_id, current) if next_attempts else None
    except BrokenPipeError:
        silence(sys.stdout)
    except KeyboardInterrupt:
        silence(sys.stdout)
        raise typer.Exit(EXIT_CANCELLED) from None


def _header(attempt: AttemptRecord) -> None:
    """The line `jobgraph logs` prints before an attempt's output."""
    console.print(f"# {attempt.task} attempt {attempt.attempt}: {attempt.status} ({attempt.log_path})",
                  style="dim", markup=False)
    sys.stdout.flush()


def _print_attempt(records: Store, run_id: str, attempt: AttemptRecord, out: BinaryIO) -> None:
    """Copy the attempt's log to `out` as it grows, until the attempt has ended and all of it was copied."""
    offset, told = 0, False
    while True:
        try:
            chunk = read_log(records, run_id, attempt.task, attempt.attempt, offset, MAX_LOG_CHUNK)
        except Refused:
            raise StoreError(f"the log file {attempt.log_path} is not a regular file (did a job replace it?): "
                             "it is not shown") from None
        if chunk.data:
            out.write(chunk.data)
            out.flush()
            offset = chunk.next_offset
            continue
        if chunk.complete:
            if offset == 0 and not os.path.lexists(attempt.log_path):
                raise StoreError(f"the log file {attempt.log_path} is gone")
            return
        if not told and not os.path.lexists(attempt.log_path):
            told = _tell_if_remote(records, run_id, attempt)
        _stop_if_lost(records, run_id)
        time.sleep(POLL_SECS)


def _tell_if_remote(records: Store, run_id: str, attempt: AttemptRecord) -> bool:
    """Say once that a remote attempt's output arrives only at its end (Slurm's does); True once said."""
    now = next((a for a in records.attempts(run_id, attempt.task) if a.attempt == attempt.attempt), attempt)
    if not now.backend_ref or now.status != AttemptStatus.RUNNING:
        return False
    errors.print(f"{now.task} attempt {now.attempt} is still running in {now.runner} ({now.backend_ref}): "
                 "its output is stored here when it ends; waiting for it", markup=False, style="dim")
    return True


def _stop_if_lost(records: Store, run_id: str) -> None:
    """End with exit 1 if the process running the run is gone (kill -9): its attempts will not end by themselves."""
    run = records.run(run_id)
    if run.state == RunState.RUNNING and run.owner and owner_is_gone(run.owner) \
            and records.run(run_id).state == RunState.RUNNING:  # not ended (and its jobgraph exited) meanwhile
        errors.print(f"the jobgraph process running run {run.run_id} ({run.owner}) is gone: its attempts "
                     "stay RUNNING until the next `jobgraph run`, `retry` or `serve` finds the lost run; "
                     "stopped following",
                     markup=False)
        raise typer.Exit(EXIT_FAILED)


def _next_attempt(records: Store, run_id: str, ended: AttemptRecord) -> AttemptRecord | None:
    """The job's next attempt once it starts, or None once the job (or the run) will run it no more."""
    while True:
        later = _after(records.attempts(run_id, ended.task), ended)
        if later is not None:
            return later
        if records.run(run_id).state != RunState.RUNNING:
            return _after(records.attempts(run_id, ended.task), ended)  # one that started as the run ended
        job = next((t for t in records.tasks(run_id) if t.task == ended.task), None)
        if job is None or job.state in TERMINAL_TASK_STATES:
            return _after(records.attempts(run_id, ended.task), ended)
        _stop_if_lost(records, run_id)
        time.sleep(POLL_SECS)


def _after(attempts: list[AttemptRecord], ended: AttemptRecord) -> AttemptRecord | None:
    """The first attempt recorded after `ended` (attempts come oldest first), or None."""
    numbers = [a.attempt for a in attempts]
    at = numbers.index(ended.attempt) if ended.attempt in numbers else len(attempts)
    return attempts[at + 1] if at + 1 < len(attempts) else None

