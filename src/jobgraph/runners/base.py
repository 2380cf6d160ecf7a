"""The one small contract every backend implements: start a job, wait for it, read its logs, cancel it.

Like httpx's transports: the engine picks a runner and never learns which backend it has. Runners know
nothing of DAGs, retries or the store; they run one attempt of one job and say how it ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from jobgraph.states import AttemptStatus

DEFAULT_LOG_LIMIT = 100 << 20
"""The most output stored per attempt unless the file says otherwise: enough for any log a person reads."""


@dataclass(frozen=True)
class JobSpec:
    """Everything a runner needs to run one attempt of one job.

    `secret_values` are replaced by `***` in whatever the runner writes; `withheld_env` names secrets
    of other jobs, which a runner that inherits jobgraph's environment must not pass on; `secret_names`
    are this job's own `secrets` (their values are in `env`), which a remote runner passes by reference;
    `return_value_path` is where the engine reads the return value once the attempt ended: a runner
    whose jobs write it elsewhere (a container's own out folder) brings it there; `log_limit` caps
    the bytes of output stored.
    """

    run_id: str
    pipeline: str
    task: str
    attempt: int
    image: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    log_path: Path
    pool: str = "default"
    cpu: float | None = None
    memory_bytes: int | None = None
    container_name: str | None = None
    volumes: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    network: str | None = None
    secret_values: frozenset[str] = field(default_factory=frozenset)
    withheld_env: frozenset[str] = field(default_factory=frozenset)
    secret_names: frozenset[str] = field(default_factory=frozenset)
    return_value_path: Path | None = None
    log_limit: int = DEFAULT_LOG_LIMIT
    timeout: float | None = None


class Cause(StrEnum):
    """What the backend knows of why an attempt failed, beyond its status and exit code."""

    OOM = "oom"  #: killed by the out-of-memory killer (its container's, the pod's or Slurm's memory limit)
    LOST = "lost"  #: the node it ran on was lost or preempted, or the pod evicted: not the job's doing


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended. `error` says why it did not end DONE, in words a person can act on."""

    status: AttemptStatus
    exit_code: int | None = None
    error: str | None = None
    ended_at: datetime | None = None
    """When the attempt really ended, if the runner knows it better than "now" (an attempt that ended
    while no jobgraph watched it)."""
    cause: Cause | None = None
    """Why, when the backend says so beyond the status: OOM for a kill by the out-of-memory killer,
    LOST for a node lost, preempted or an evicted pod; what `retry_on: [oom, lost]` match."""


H = TypeVar("H")
"""A runner's handle type: whatever it needs to find its job again; the engine only passes it back."""


class Runner(Protocol[H]):
    """A backend that runs job attempts.

    Contract:
    - `start` returns once the job is running, or raises RunnerError if it could not be started
      (the engine records that as an ERROR attempt). stdout and stderr go to `spec.log_path`
      through an `output.LogWriter` (redacted, capped), never by handing the job the file.
    - `wait` returns the Outcome once the job has ended. It may be cancelled (asyncio) at any time;
      cancelling `wait` does not stop the job: `cancel` does.
    - `cancel` stops the job and everything it started, and returns once nothing of it is left.
      Calling it on a job that already ended is harmless.
    - `logs` returns the last `tail_bytes` of the job's output, for the error column.
    - `read_return_value` returns what the job left as its return value (at most `max_bytes`, never
      through a link or from a FIFO), wherever the backend keeps it: a local file, a shared folder.
    - `adopt` re-attaches to an attempt an earlier jobgraph process submitted (by its `handle_ref`),
      whatever it has done since: still queued, running, or over; only remote runners can.
    - `handle_ref` names the attempt in the backend (a Slurm job id), for the store to record the
      moment it is submitted; "" when nothing of the attempt outlives jobgraph (local processes).
    - `describe` says what `start` would submit (argv, env, container body, batch script), secrets
      shown as references, for `jobgraph plan`; it runs and writes nothing.
    - `open` connects to the backend before the run: one that cannot be reached stops the run before
      anything starts (raise RunnerError), rather than failing every job one by one.
    - `aclose` releases the runner's own resources once the run is over.
    """

    name: str
    """The runner's name in the registry (local, podman, slurm...), as the store records it."""

    async def open(self) -> None:
        """Connect to the backend, or raise RunnerError saying why it cannot be reached."""
        ...

    async def start(self, spec: JobSpec) -> H:
        """Start one attempt."""
        ...

    async def adopt(self, reference: str, spec: JobSpec) -> H:
        """Re-attach to an attempt an earlier jobgraph started (remote runners; others raise RunnerError)."""
        ...

    async def wait(self, handle: H) -> Outcome:
        """Wait until the attempt ends."""
        ...

    async def logs(self, handle: H, tail_bytes: int) -> str:
        """The end of the attempt's output."""
        ...

    async def read_return_value(self, handle: H, max_bytes: int) -> str | None:
        """The attempt's return value, if it left one."""
        ...

    def handle_ref(self, handle: H) -> str:
        """The attempt's name in the backend, or "" when it has none that outlives jobgraph."""
        ...

    def describe(self, spec: JobSpec) -> dict[str, object]:
        """What `start` would submit for this attempt."""
        ...

    async def cancel(self, handle: H) -> None:
        """Stop the attempt and everything it started."""
        ...

    async def aclose(self) -> None:
        """Release the runner's resources."""
        ...


AnyRunner = Runner[Any]
"""What the engine holds: a runner of any backend."""

