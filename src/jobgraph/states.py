"""The states a run, a job and an attempt move through, named as the seed's tables name them."""

from enum import StrEnum


class TaskState(StrEnum):
    """Where one job of a graph run stands."""

    PENDING = "PENDING"  #: waiting for its predecessors
    QUEUED = "QUEUED"  #: ready, waiting for a slot in its pool
    RUNNING = "RUNNING"  #: an attempt is running (or waiting to retry)
    SUCCEEDED = "SUCCEEDED"  #: an attempt ended DONE
    FAILED = "FAILED"  #: every allowed attempt failed
    SKIPPED = "SKIPPED"  #: not run because a predecessor did not succeed
    CANCELLED = "CANCELLED"  #: the run was cancelled before the job finished


class AttemptStatus(StrEnum):
    """How one execution of a job ended, as Snowflake's job services report it."""

    DONE = "DONE"  #: exit code 0
    FAILED = "FAILED"  #: non-zero exit code
    TIMEOUT = "TIMEOUT"  #: killed after the job's timeout
    CANCELLED = "CANCELLED"  #: killed because the run was cancelled
    ERROR = "ERROR"  #: the runner could not start it (missing image, engine down)
    RUNNING = "RUNNING"  #: still running: only the store shows this, while it lasts


class RunState(StrEnum):
    """Where a whole graph run stands."""

    RUNNING = "RUNNING"  #: jobs are still running or waiting
    SUCCEEDED = "SUCCEEDED"  #: every job succeeded
    FAILED = "FAILED"  #: at least one job failed or was skipped
    CANCELLED = "CANCELLED"  #: the run was cancelled


TERMINAL_TASK_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED}
)
"""A job in one of these states will not change again in this run."""

RETRYABLE_TASK_STATES = frozenset({TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED})
"""The jobs that `jobgraph retry RUN_ID` runs again."""
