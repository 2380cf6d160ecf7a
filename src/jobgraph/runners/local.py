"""Run a job as a host process: the image's mapped command plus the job's args, in its own process group.

The process group is what makes "no process left behind" true: a timeout or a cancel signals the
whole group, and once the job's main process has exited any child it left in the group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec, Outcome, redact_file, tail_of
from jobgraph.states import AttemptStatus

PYTHON_ALIASES = frozenset({"python", "python3"})
"""In an image's command, these mean the Python that runs jobgraph, so a venv needs no activation."""


@dataclass
class LocalProcess:
    """A started job: its process and group."""

    popen: subprocess.Popen[bytes]
    spec: JobSpec

    @property
    def pgid(self) -> int:
        """The job's process group: its main process started a new session, so it is the leader."""
        return self.popen.pid


class LocalRunner:
    """Runner for host processes."""

    def __init__(self, images: Mapping[str, Sequence[str]], cwd: Path | None = None,
                 kill_grace: float = 5.0) -> None:
        self._images = images
        self._cwd = cwd
        self._kill_grace = kill_grace

    def command(self, spec: JobSpec) -> list[str]:
        """The host command for a job: the image's command, then the job's args."""
        try:
            command = list(self._images[spec.image])
        except KeyError:
            raise RunnerError(f"image '{spec.image}' has no command in the pipeline's 'images'") from None
        if command[0] in PYTHON_ALIASES:
            command[0] = sys.executable
        return command + list(spec.args)

    async def open(self) -> None:
        """Nothing to connect to: processes start on this host."""

    async def start(self, spec: JobSpec) -> LocalProcess:
        """Start the process with stdout and stderr appended to the attempt's log file."""
        command = self.command(spec)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in spec.withheld_env} | dict(spec.env)
        with spec.log_path.open("ab") as log:
            try:
                popen = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=env, cwd=self._cwd, start_new_session=True, close_fds=True,
                )
            except OSError as exc:
                raise RunnerError(f"cannot start {command[0]!r}: {exc.strerror or exc}") from None
        return LocalProcess(popen, spec)

    async def wait(self, handle: LocalProcess) -> Outcome:
        """Wait for the main process, then kill whatever it left behind in its group."""
        await _exited(handle.popen)
        code = handle.popen.wait()
        if _kill_group(handle.pgid, signal.SIGKILL):
            await _group_gone(handle.pgid)
        redact_file(handle.spec.log_path, handle.spec.secret_values)
        if code == 0:
            return Outcome(AttemptStatus.DONE, 0)
        if code < 0:
            name = signal.Signals(-code).name
            return Outcome(AttemptStatus.FAILED, 128 - code, f"killed by {name}")
        return Outcome(AttemptStatus.FAILED, code, f"exit code {code}")

    async def logs(self, handle: LocalProcess, tail_bytes: int) -> str:
        """The end of the attempt's log file."""
        return tail_of(handle.spec.log_path, tail_bytes)

    async def cancel(self, handle: LocalProcess) -> None:
        """SIGTERM the group, give it `kill_grace` seconds, then SIGKILL it; reap the main process."""
        if handle.popen.poll() is None:
            _kill_group(handle.pgid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_exited(handle.popen), self._kill_grace)
        _kill_group(handle.pgid, signal.SIGKILL)
        handle.popen.wait()
        if _kill_group(handle.pgid, signal.SIGKILL):
            await _group_gone(handle.pgid)
        redact_file(handle.spec.log_path, handle.spec.secret_values)

    async def aclose(self) -> None:
        """Nothing to release: every process is reaped by wait or cancel."""


def _kill_group(pgid: int, sig: signal.Signals) -> bool:
    """Signal a process group; False when no process is left in it."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def _group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait until no live process remains in the group: a SIGKILL is delivered, not instantly obeyed.

    Only called when the group still had members, so the common case (none) costs nothing.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while _live_members(pgid) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


def _live_members(pgid: int) -> bool:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


async def _exited(popen: subprocess.Popen[bytes]) -> None:
    """Return once the process has exited, without reaping it, and without a thread per process."""
    if popen.poll() is not None:
        return
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        await asyncio.to_thread(popen.wait)
        return
    exited = loop.create_future()

    def on_readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_readable)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
