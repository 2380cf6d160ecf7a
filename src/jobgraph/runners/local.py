"""Run a job as a host process: the image's mapped command plus the job's args, in its own session.

"No process left behind" is the containment module's: every process the job starts, whatever it does
with sessions and groups, belongs to its attempt; when the main process exits, when it times out or
is cancelled, every one of them is killed (cancel first sends SIGTERM and gives them `kill_grace`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec, Outcome
from jobgraph.runners.containment import Attempt, containment, kill_lost_run
from jobgraph.runners.output import LogWriter, PipeCapture, return_value_of, tail
from jobgraph.runners.redaction import redactor_for, shown_env
from jobgraph.runners.spawn import Child, Spawner
from jobgraph.states import AttemptStatus

if TYPE_CHECKING:
    from pydantic import BaseModel

    from jobgraph.config.model import Pipeline

LOCAL_MARKER = "JOBGRAPH_RUNNER"
"""Set to `local` in every local job's environment: recovery kills a lost run's processes by it, never a
process of the same run that a remote runner (a Slurm job on this very host) started."""

PYTHON_ALIASES = frozenset({"python", "python3"})
"""In an image's command, these mean the Python that runs jobgraph, so a venv needs no activation."""

KILL_GRACE = 5.0
"""Seconds a cancelled or timed-out job has between SIGTERM and SIGKILL; JOBGRAPH_KILL_GRACE sets it."""


@dataclass
class LocalProcess:
    """A started job: its main process, every process of its attempt, and the pipe its output comes through."""

    child: Child
    spec: JobSpec
    processes: Attempt
    output: PipeCapture


class LocalRunner:
    """Runner for host processes."""

    name = "local"

    def __init__(self, images: Mapping[str, Sequence[str]], cwd: Path | None = None,
                 kill_grace: float | None = None) -> None:
        self._images = images
        self._cwd = cwd
        self._spawner = Spawner(cwd)
        self._kill_grace = kill_grace
        self._runs: set[str] = set()
        self._base_env: dict[frozenset[str], dict[str, str]] = {}

    def command(self, spec: JobSpec) -> list[str]:
        """The host command for a job: its own `command` or its image's, then the job's args."""
        try:
            command = list(spec.command or self._images[spec.image])
        except KeyError:
            raise RunnerError(f"image '{spec.image}' has no command in the pipeline's 'images'") from None
        if command[0] in PYTHON_ALIASES:
            command[0] = sys.executable
        return command + list(spec.args)

    async def open(self) -> None:
        """Nothing to connect to: processes start on this host."""

    async def start(self, spec: JobSpec) -> LocalProcess:
        """Start the process with stdout and stderr on a pipe that jobgraph drains into the log, redacted."""
        command = self.command(spec)
        env = self._inherited(spec.withheld_env) | dict(spec.env)
        env[LOCAL_MARKER] = "local"
        self.kill_grace()  # a bad setting stops the job before it starts, not when it must be killed
        try:
            output = PipeCapture(LogWriter(spec.log_path, redactor_for(spec.secret_values), spec.log_limit))
        except OSError as exc:
            raise RunnerError(f"cannot create the log {spec.log_path}: {exc.strerror or exc}") from None
        processes = containment().attempt(spec.run_id, spec.task, spec.attempt, env)
        self._runs.add(spec.run_id)
        with processes.placing():
            try:
                child = self._spawner.spawn(command, env, output.job_end)
            except OSError as exc:
                output.close()
                raise RunnerError(f"cannot start {command[0]!r}: {exc.strerror or exc}") from None
        processes.started(child.pid)
        output.start()
        return LocalProcess(child, spec, processes, output)

    def _inherited(self, withheld: frozenset[str]) -> dict[str, str]:
        """jobgraph's environment without the withheld secrets: copied once per runner and withheld set."""
        base = self._base_env.get(withheld)
        if base is None:
            base = self._base_env[withheld] = {k: v for k, v in os.environ.items() if k not in withheld}
        return base

    async def wait(self, handle: LocalProcess) -> Outcome:
        """Wait for the main process, then kill whatever it left behind, then reap it."""
        await _exited(handle.child)
        await handle.processes.end()
        code = handle.child.reap()
        await handle.output.finish()
        if code == 0:
            return Outcome(AttemptStatus.DONE, 0)
        if code < 0:
            name = signal.Signals(-code).name
            return Outcome(AttemptStatus.FAILED, 128 - code, f"killed by {name}")
        return Outcome(AttemptStatus.FAILED, code, f"exit code {code}")

    async def logs(self, handle: LocalProcess, tail_bytes: int) -> str:
        """The end of the attempt's log file."""
        return tail(handle.spec.log_path, tail_bytes)

    async def read_return_value(self, handle: LocalProcess, max_bytes: int) -> str | None:
        """What the job wrote to JOBGRAPH_RETURN_VALUE_FILE, read safely."""
        return return_value_of(handle.spec.return_value_path, handle.spec.secret_values, max_bytes)

    async def adopt(self, reference: str, spec: JobSpec) -> LocalProcess:
        """Nothing to re-attach to: what an earlier jobgraph left here is killed by recovery, not adopted."""
        raise RunnerError(f"the {self.name} runner cannot adopt an attempt ({reference})")

    def handle_ref(self, handle: LocalProcess) -> str:
        """Nothing to record: a local attempt never outlives jobgraph (recovery kills what is left)."""
        return ""

    def describe(self, spec: JobSpec) -> dict[str, object]:
        """The command and the environment the job gets on top of jobgraph's own; secrets as references."""
        redactor = redactor_for(spec.secret_values)
        env = shown_env(spec.env, spec.secret_values)
        return {"runner": "local", "argv": [redactor.text(part) for part in self.command(spec)], "env": env,
                "cwd": str(self._cwd or Path.cwd()), "withheld_env": sorted(spec.withheld_env)}

    async def cancel(self, handle: LocalProcess) -> None:
        """SIGTERM every process of the attempt, give them `kill_grace` seconds, SIGKILL what is left."""
        if handle.processes.alive():
            handle.processes.signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_all_gone(handle.processes), self.kill_grace())
        await handle.processes.end()
        handle.child.reap()
        await handle.output.finish()

    def kill_grace(self) -> float:
        """The grace given, JOBGRAPH_KILL_GRACE seconds unless set when the runner was made."""
        if self._kill_grace is not None:
            return self._kill_grace
        setting = os.environ.get("JOBGRAPH_KILL_GRACE", "").strip()
        if not setting:
            return KILL_GRACE
        try:
            grace = float(setting)
        except ValueError:
            grace = -1.0
        if not 0 <= grace <= 3600:
            raise RunnerError(f"JOBGRAPH_KILL_GRACE={setting!r} is not a number of seconds from 0 to 3600")
        return grace

    async def aclose(self) -> None:
        """Every attempt's processes are killed and reaped by wait or cancel; remove what held the runs."""
        for run_id in self._runs:
            containment().end_run(run_id)
        self._runs.clear()


async def _all_gone(processes: Attempt) -> None:
    """Return once no process of the attempt is alive; polled, as no kernel event covers them all."""
    delay = 0.005
    while processes.alive():
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _exited(child: Child) -> None:
    """Return once the process has exited, without reaping it, and without a thread per process."""
    if child.code is not None:
        return
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):
        await asyncio.to_thread(_wait_without_reaping, child.pid)
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


def _wait_without_reaping(pid: int) -> None:
    """Block until the process exits, leaving it to be reaped (where pidfd_open is missing)."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def build(_name: str, pipeline: Pipeline, _settings: BaseModel | None, _folder: Path,
          cwd: Path | None) -> LocalRunner:
    """The registry's constructor: the pipeline's `images` say which host command stands for each image."""
    return LocalRunner(pipeline.images, cwd=cwd)


def clean_up_lost_run(_name: str, run_id: str, _folder: Path) -> int:
    """Kill what a lost run's local jobs left (its cgroups, its marked processes); how many processes."""
    return kill_lost_run(run_id)
