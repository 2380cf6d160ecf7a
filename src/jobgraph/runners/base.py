"""The one small contract every backend implements: start a job, wait for it, read its logs, cancel it.

Like httpx's transports: the engine picks a runner and never learns which backend it has. Runners know
nothing of DAGs, retries or the store; they run one attempt of one job and say how it ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from jobgraph.states import AttemptStatus


@dataclass(frozen=True)
class JobSpec:
    """Everything a runner needs to run one attempt of one job.

    `secret_values` are replaced by `***` in whatever the runner writes; `withheld_env` names secrets
    of other jobs, which a runner that inherits jobgraph's environment must not pass on;
    `return_value_path` is where `JOBGRAPH_RETURN_VALUE_FILE` points on this host.
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
    return_value_path: Path | None = None


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended. `error` says why it did not end DONE, in words a person can act on."""

    status: AttemptStatus
    exit_code: int | None = None
    error: str | None = None


H = TypeVar("H")
"""A runner's handle type: whatever it needs to find its job again; the engine only passes it back."""


class Runner(Protocol[H]):
    """A backend that runs job attempts.

    Contract:
    - `start` returns once the job is running, or raises RunnerError if it could not be started
      (the engine records that as an ERROR attempt). stdout and stderr go to `spec.log_path`.
    - `wait` returns the Outcome once the job has ended. It may be cancelled (asyncio) at any time;
      cancelling `wait` does not stop the job: `cancel` does.
    - `cancel` stops the job and everything it started, and returns once nothing of it is left.
      Calling it on a job that already ended is harmless.
    - `logs` returns the last `tail_bytes` of the job's output, for the error column.
    - `open` connects to the backend before the run: one that cannot be reached stops the run before
      anything starts (raise RunnerError), rather than failing every job one by one.
    - `aclose` releases the runner's own resources once the run is over.
    """

    async def open(self) -> None:
        """Connect to the backend, or raise RunnerError saying why it cannot be reached."""
        ...

    async def start(self, spec: JobSpec) -> H:
        """Start one attempt."""
        ...

    async def wait(self, handle: H) -> Outcome:
        """Wait until the attempt ends."""
        ...

    async def logs(self, handle: H, tail_bytes: int) -> str:
        """The end of the attempt's output."""
        ...

    async def cancel(self, handle: H) -> None:
        """Stop the attempt and everything it started."""
        ...

    async def aclose(self) -> None:
        """Release the runner's resources."""
        ...


def tail_of(path: Path, tail_bytes: int) -> str:
    """The last bytes of a log file as text; runners that write logs to disk share this."""
    try:
        with path.open("rb") as file:
            file.seek(0, 2)
            size = file.tell()
            file.seek(max(0, size - tail_bytes))
            data = file.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > tail_bytes:
        text = "..." + text[text.find("\n") + 1 :] if "\n" in text else "..." + text
    return text


AnyRunner = Runner[Any]
"""What the engine holds: a runner of any backend."""


REDACTED = "***"


def redact(text: str, secret_values: frozenset[str]) -> str:
    """Hide secret values in text that is about to be stored or shown."""
    for value in sorted(secret_values, key=len, reverse=True):
        if value:
            text = text.replace(value, REDACTED)
    return text


def redact_file(path: Path, secret_values: frozenset[str]) -> None:
    """Rewrite a log file with secret values hidden (a no-op without secrets)."""
    if not secret_values or not path.exists():
        return
    text = path.read_text(errors="replace")
    cleaned = redact(text, secret_values)
    if cleaned != text:
        path.write_text(cleaned)
