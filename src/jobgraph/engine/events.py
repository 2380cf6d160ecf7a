"""What the engine tells its listeners (the store, the live view, later the web page), as plain records.

The engine does not know who listens: a listener is any callable taking an Event. The events of one
event-loop wake-up reach the essential listeners (the store) first, all at once, and the others (the
live view) only then (engine/delivery.py), so nothing is reported that is not already recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from jobgraph.states import AttemptStatus, RunState, TaskState


@dataclass(frozen=True)
class TaskInfo:
    """A job as the run's listeners need to know it up front."""

    name: str
    pool: str
    image: str
    predecessors: tuple[str, ...]
    is_finalizer: bool = False


@dataclass(frozen=True)
class RunStarted:
    """A graph run began (or, with `resumed`, began its next attempt: `jobgraph retry`)."""

    run_id: str
    pipeline: str
    at: datetime
    scheduled_time: datetime
    tasks: tuple[TaskInfo, ...]
    snapshot: str
    run_attempt: int = 1
    resumed: tuple[str, ...] = ()
    trigger: str = "manual"
    version: str | None = None
    kept: tuple[str, ...] = ()
    """Jobs that had ended otherwise (FAILED, SKIPPED) and are kept as they ended (resuming a lost run)."""
    selection: str | None = None
    """A partial run's or a targeted retry's choice of jobs (selection.py), as runs.selection stores it (JSON)."""


@dataclass(frozen=True)
class TaskChanged:
    """A job moved to a new state; `reason` says why it was skipped, failed or cancelled."""

    run_id: str
    task: str
    state: TaskState
    at: datetime
    attempt: int = 0
    reason: str | None = None
    return_value: str | None = None


@dataclass(frozen=True)
class AttemptStarted:
    """One execution of a job began."""

    run_id: str
    task: str
    attempt: int
    at: datetime
    log_path: Path


@dataclass(frozen=True)
class AttemptSubmitted:
    """A backend took the attempt and named it (a Slurm job id): recorded at once, so a jobgraph that
    dies while the attempt runs leaves a handle to find it again by."""

    run_id: str
    task: str
    attempt: int
    runner: str
    reference: str


@dataclass(frozen=True)
class AttemptAdopted:
    """An attempt an earlier jobgraph submitted is waited for again, in this graph run attempt: it now
    belongs to it (its records move with it)."""

    run_id: str
    task: str
    attempt: int
    at: datetime


@dataclass(frozen=True)
class AttemptEnded:
    """One execution of a job ended; `error` holds the error text and the end of its log."""

    run_id: str
    task: str
    attempt: int
    status: AttemptStatus
    started_at: datetime
    at: datetime
    exit_code: int | None
    error: str | None
    log_path: Path


@dataclass(frozen=True)
class RetryWaiting:
    """An attempt failed and the job waits `delay` seconds before its next attempt (Airflow's up_for_retry)."""

    run_id: str
    task: str
    next_attempt: int
    at: datetime
    delay: float


@dataclass(frozen=True)
class RunEnded:
    """The graph run is over, finalizer included."""

    run_id: str
    state: RunState
    at: datetime


Event = (RunStarted | TaskChanged | AttemptStarted | AttemptSubmitted | AttemptAdopted | AttemptEnded | RetryWaiting
         | RunEnded)
Listener = Callable[[Event], None]


class Recorder(Protocol):
    """An essential listener that writes the events of one event-loop wake-up in one go (the store).

    `record_all` gets them in the order they happened, before any other listener sees them. It
    should write all or none of them (one transaction); if it raises, the engine drops it and cancels
    the run, so that nothing runs unrecorded.
    """

    essential: bool

    def __call__(self, event: Event) -> None:
        """Record one event."""

    def record_all(self, events: Sequence[Event]) -> None:
        """Record `events`, in order, together."""
