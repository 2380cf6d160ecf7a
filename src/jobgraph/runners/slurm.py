"""Run each attempt as one Slurm batch job, through Slurm's own commands; one poll watches them all.

Relies on Slurm's CLI only (sbatch, squeue, scancel, scontrol; no pyslurm, no slurmrestd, no
accounting database), as shipped by Debian 12 (Slurm 22.05.8), where every behaviour below was
checked on a real single-node cluster (scripts/setup-slurm.sh): `sbatch --parsable` with the script
on stdin; `squeue --states=all -O ...exit_code...` for jobs the controller still holds (MinJobAge
after their end); the raw wait status in `exit_code`; FAILED with signal 9 and "Exceeded job memory
limit" in the output for a job over its --mem under jobacct_gather's OverMemoryKill (OUT_OF_MEMORY on
cgroup clusters); TIMEOUT once `--time` (whole minutes) has passed; CANCELLED after `scancel`.

- One attempt = one `sbatch` (slurm_batch.py has the flags and the script `jobgraph plan` shows).
  Output, the exit code and the return value go to the attempt's folder under `shared_dir`, which the
  compute nodes must share with jobgraph; the script writes the exit code as its last act, so it
  survives the controller forgetting the job and needs no `sacct`.
- One poller per runner: each poll is a single `squeue` call over every job in flight; the waiters
  are futures it resolves. Slurm not answering for `controller_timeout`, or a job it no longer knows
  that left no exit code, is an ERROR that says so.
- `handle_ref` is the Slurm job id, which the store records; `adopt` re-attaches to it from another
  jobgraph process, whether the job is pending, running or already over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec, Outcome
from jobgraph.runners.output import read_return_value, scrub_return_file, tail
from jobgraph.runners.redaction import redactor_for
from jobgraph.runners.slurm_batch import (
    OUTPUT_FILE,
    RETURN_VALUE_FILE,
    NodeSize,
    SlurmSettings,
    attempt_folder,
    batch_script,
    comment,
    host_command,
    resource_limits,
    sbatch_argv,
    sbatch_env,
)
from jobgraph.runners.slurm_files import make_private, prepare_attempt_folder, read_exit_code, save_log
from jobgraph.runners.slurm_states import ACTIVE_STATES, NEVER_STARTS, SQUEUE_FORMAT, SlurmJob, outcome_of, parse_squeue
from jobgraph.runners.watched import Watched
from jobgraph.states import AttemptStatus

if TYPE_CHECKING:
    from pydantic import BaseModel

    from jobgraph.config.model import Pipeline

COMMAND_TIMEOUT = 30.0
"""Longest wait for one Slurm command (Slurm's own MessageTimeout is 10 s by default)."""

CANCEL_TIMEOUT = 90.0
"""How long a cancelled job may stay in the queue: Slurm's KillWait (30 s) between TERM and KILL, and more."""

LOG_TAIL_FOR_STATE = 4096

RETURN_VALUE_READ_BYTES = 10_000
"""Read (and the shared file scrubbed) when the attempt ends: the engine takes at most this much."""

SLURM_COMMANDS = ("sbatch", "squeue", "scancel", "scontrol")


@dataclass(eq=False)
class SlurmHandle:
    """A submitted attempt: its Slurm job id, its folder, and the outcome the poller will set."""

    job_id: str
    spec: JobSpec
    folder: Path
    outcome: asyncio.Future[Outcome]
    cancelled: bool = False
    limits: str = field(default="")
    return_value: str | None = None


class SlurmRunner:
    """Runner for Slurm batch jobs."""

    name = "slurm"

    def __init__(self, images: Mapping[str, Sequence[str]], settings: SlurmSettings, folder: Path,
                 cwd: Path | None = None) -> None:
        self._images = images
        self._settings = settings
        self._cwd = (cwd or Path.cwd()).resolve()
        self._shared = (self._cwd / (settings.shared_dir or folder)).resolve()
        self._watched: Watched[SlurmHandle] = Watched(lambda handle: handle.job_id)
        self._poller: asyncio.Task[None] | None = None
        self._largest: NodeSize | None = None

    @property
    def settings(self) -> SlurmSettings:
        """The `runners.slurm` settings it was made with (on_orchestrator_loss is read by recovery)."""
        return self._settings

    async def open(self) -> None:
        """Check that Slurm's commands exist and the controller answers, so a run fails before it starts."""
        missing = [name for name in SLURM_COMMANDS if shutil.which(name) is None]
        if missing:
            raise RunnerError(f"Slurm's commands are not installed here ({', '.join(missing)} not on PATH); "
                              "on a test machine: `bash scripts/setup-slurm.sh`")
        code, out, err = await self._slurm(["scontrol", "ping"])
        if code != 0 or " is UP" not in out:
            raise RunnerError(f"the Slurm controller does not answer: {(out + err).strip() or f'exit code {code}'}")
        try:
            await asyncio.to_thread(make_private, self._shared / "slurm")
        except OSError as exc:
            raise RunnerError(f"runners.slurm.shared_dir: cannot make the attempts' folder under {self._shared}: "
                              f"{exc.strerror or exc}") from None
        self._largest = await self._largest_node()

    async def _largest_node(self) -> NodeSize | None:
        """The most CPUs and memory one node of the partition has: requests are capped to it, as a pool's
        instance family may ask more than a small cluster's nodes have (the container runner caps CPUs too)."""
        partitions = {p for p in (self._settings.partition, *self._settings.pool_partitions.values()) if p}
        argv = ["sinfo", "-h", "-N", "-o", "%c|%m"] + (["-p", ",".join(sorted(partitions))] if partitions else [])
        code, out, _err = await self._slurm(argv)
        sizes = [line.split("|") for line in out.split() if code == 0 and "|" in line]
        try:
            return NodeSize(max(int(c) for c, _ in sizes), max(int(m) for _, m in sizes)) if sizes else None
        except ValueError:
            return None

    def describe(self, spec: JobSpec) -> dict[str, object]:
        """What `start` would submit for this attempt: sbatch's argv, its environment and the script on
        its stdin, secrets shown as ${NAME} references."""
        folder = attempt_folder(self._shared, spec)
        return {
            "runner": "slurm",
            "argv": [redactor_for(spec.secret_values).text(arg)
                     for arg in sbatch_argv(spec, self._settings, folder, self._cwd, self._largest)],
            "env": sbatch_env(),
            "stdin": batch_script(spec, host_command(self._images, spec), folder, show_secrets=False),
            "folder": str(folder),
            **({} if self._largest else {"note": "at submit time --cpus-per-task and --mem are capped to the "
                                                 "partition's largest node"}),
        }

    def handle_ref(self, handle: SlurmHandle) -> str:
        """The Slurm job id: what the store records, and what `adopt` takes back."""
        return handle.job_id

    async def start(self, spec: JobSpec) -> SlurmHandle:
        """Submit the attempt with one `sbatch`; a refusal is a RunnerError with sbatch's reason.

        A cancel that arrives while sbatch runs does not lose the job: the submission finishes, then
        the job is cancelled, then the cancel goes on.
        """
        folder = attempt_folder(self._shared, spec)
        script = batch_script(spec, host_command(self._images, spec), folder)
        argv = sbatch_argv(spec, self._settings, folder, self._cwd, self._largest)
        await asyncio.to_thread(prepare_attempt_folder, folder)
        submitting = asyncio.ensure_future(self._submit(argv, script, spec))
        try:
            job_id = await asyncio.shield(submitting)
        except asyncio.CancelledError:
            with contextlib.suppress(RunnerError):
                await self.cancel(self._watch(await submitting, spec, folder))
            raise
        return self._watch(job_id, spec, folder)

    async def adopt(self, ref: str, spec: JobSpec) -> SlurmHandle:
        """Re-attach to the attempt an earlier jobgraph submitted as Slurm job `ref`.

        Works whether the job is pending, running or over: the next poll settles it. A job Slurm no
        longer knows is judged by the exit code file it left (checked to be that job's), else ERROR;
        a job whose comment names another attempt is an ERROR too. A malformed ref is a RunnerError.
        """
        if not ref.isdigit():
            raise RunnerError(f"{ref!r} is not a Slurm job id")
        return self._watch(ref, spec, attempt_folder(self._shared, spec))

    async def wait(self, handle: SlurmHandle) -> Outcome:
        """Wait until the poller has seen the attempt end; cancelling this leaves the job alone."""
        return await asyncio.shield(handle.outcome)

    async def logs(self, handle: SlurmHandle, tail_bytes: int) -> str:
        """The end of the attempt's output, from its folder (a link or special file there is not read)."""
        source = handle.spec.log_path if handle.outcome.done() else handle.folder / OUTPUT_FILE
        text = await asyncio.to_thread(tail, source, tail_bytes)
        return redactor_for(handle.spec.secret_values).text(text)

    async def read_return_value(self, handle: SlurmHandle, max_bytes: int) -> str | None:
        """The job's return value file, at most `max_bytes`; None if it wrote none (or planted a link)."""
        value = handle.return_value
        return None if value is None else value[:max_bytes]

    async def cancel(self, handle: SlurmHandle) -> None:
        """`scancel` the job, then return once squeue shows it ended (or no longer lists it)."""
        handle.cancelled = True
        code, _, err = await self._slurm(["scancel", handle.job_id])
        if code != 0 and "Invalid job id" not in err and "already completing or completed" not in err:
            raise RunnerError(f"scancel {handle.job_id} failed: {err.strip() or f'exit code {code}'}")
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + CANCEL_TIMEOUT, 0.05
        while True:
            jobs = await self._squeue([handle.job_id])
            job = jobs.get(handle.job_id)
            if job is None or job.state not in ACTIVE_STATES:
                break
            if loop.time() > deadline:
                raise RunnerError(f"Slurm job {handle.job_id} is still {job.state} {CANCEL_TIMEOUT:g}s after scancel")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
        self._watched.resolve(handle, await self._ended(handle, job))

    async def aclose(self) -> None:
        """Stop polling. Jobs still in Slurm go on: they are adopted (or cancelled) by the next jobgraph."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        self._watched.abandon("the Slurm runner was closed; the job goes on in Slurm")

    def _watch(self, job_id: str, spec: JobSpec, folder: Path) -> SlurmHandle:
        handle = self._watched.get(job_id)
        if handle is None:
            handle = SlurmHandle(job_id, spec, folder, asyncio.get_running_loop().create_future(),
                                 limits=resource_limits(spec))
            self._watched[job_id] = handle
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="jobgraph-slurm-poller")
        return handle

    async def _submit(self, argv: list[str], script: str, spec: JobSpec) -> str:
        """Submit; if sbatch's answer is lost (it timed out), look for the job by its comment before
        saying it failed, so an attempt Slurm did take is watched, never submitted twice."""
        try:
            code, out, err = await self._slurm(argv, stdin=script)
        except RunnerError:
            taken = await self.find(spec)
            if taken is None:
                raise
            return taken
        job_id = out.strip().split(";", 1)[0]
        if code != 0 or not job_id.isdigit():
            raise RunnerError(f"sbatch refused the job: {err.strip() or out.strip() or f'exit code {code}'}")
        return job_id

    async def find(self, spec: JobSpec) -> str | None:
        """The id of the Slurm job that is this attempt (by its job name and comment), if Slurm has one:
        for an attempt whose handle was lost (sbatch's answer, or a jobgraph killed before recording it)."""
        try:
            code, out, _ = await self._slurm(["squeue", "-h", "--states=all", f"--name=jobgraph.{spec.task}",
                                              "-O", "JobID:|,Comment:"])
        except RunnerError:
            return None
        for line in out.splitlines() if code == 0 else []:
            job_id, _, note = line.partition("|")
            if note.strip() == comment(spec) and job_id.strip().isdigit():
                return job_id.strip()
        return None

    async def _poll(self) -> None:
        """One `squeue` for every job in flight per interval, until none is left.

        It waits an interval before its first poll too: a job just submitted has not ended yet, and a
        poller that stopped for want of jobs must not add a call each time it starts again.
        """
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        try:
            while self._watched:
                await asyncio.sleep(self._settings.poll_interval)
                ids = list(self._watched)
                if not ids:
                    break
                try:
                    jobs = await self._squeue(ids)
                except RunnerError as exc:
                    failing_since = loop.time() if failing_since is None else failing_since
                    if loop.time() - failing_since >= self._settings.controller_timeout:
                        reason = f"Slurm did not answer for {self._settings.controller_timeout:g}s: {exc}"
                        for handle in [self._watched[i] for i in ids if i in self._watched]:
                            # a job that may still run must not run beside its retry: try to cancel it
                            try:
                                code = (await self._slurm(["scancel", handle.job_id]))[0]
                            except RunnerError:
                                code = -1
                            left = "cancelled it" if code == 0 else "could not cancel it: it may still run"
                            self._watched.resolve(handle, Outcome(AttemptStatus.ERROR, None, f"{reason}; {left}"))
                        failing_since = None
                else:
                    failing_since = None
                    for job_id in ids:
                        await self._settle(job_id, jobs.get(job_id))
        except Exception as exc:  # a bug must reach the waiters, not hang them
            self._watched.fail_all(f"the Slurm poller failed: {exc!r}")

    async def _settle(self, job_id: str, job: SlurmJob | None) -> None:
        handle = self._watched.get(job_id)
        if handle is None:
            return
        expected = comment(handle.spec)
        if job is not None and job.comment != expected:
            self._watched.resolve(handle, Outcome(AttemptStatus.ERROR, None, f"Slurm job {job_id} is not this "
                                                  f"attempt's job: its comment is {job.comment!r}, not {expected!r}"))
        elif job is not None and job.state == "PENDING" and job.reason in NEVER_STARTS:
            await self._slurm(["scancel", job_id])
            asked = resource_limits(handle.spec)
            self._watched.resolve(handle, Outcome(AttemptStatus.ERROR, None, f"Slurm will never start this job "
                                                  f"({job.reason}): it asks for more than the cluster allows"
                                                  + (f" ({asked})" if asked else "") + "; cancelled it"))
        elif job is None or job.state not in ACTIVE_STATES:
            self._watched.resolve(handle, await self._ended(handle, job))

    async def _ended(self, handle: SlurmHandle, job: SlurmJob | None) -> Outcome:
        """How an attempt that left the queue ended; its output is copied (redacted) to its log path."""
        exit_file, ended_at = await asyncio.to_thread(read_exit_code, handle.folder, handle.job_id)
        tail = await self.logs(handle, LOG_TAIL_FOR_STATE)
        redactor = redactor_for(handle.spec.secret_values)
        with contextlib.suppress(OSError):  # the outcome matters more than the copy
            await asyncio.to_thread(save_log, handle.folder, handle.spec)
            handle.return_value = await asyncio.to_thread(
                read_return_value, handle.folder / RETURN_VALUE_FILE, redactor, RETURN_VALUE_READ_BYTES)
            await asyncio.to_thread(scrub_return_file, handle.folder / RETURN_VALUE_FILE, redactor)
        if job is not None:
            return replace(outcome_of(job, exit_file, handle.cancelled, tail, handle.limits), ended_at=ended_at)
        if exit_file is not None:
            return Outcome(AttemptStatus.DONE, 0, ended_at=ended_at) if exit_file == 0 else \
                Outcome(AttemptStatus.FAILED, exit_file, f"exit code {exit_file}", ended_at=ended_at)
        if handle.cancelled:
            return Outcome(AttemptStatus.CANCELLED, None, "cancelled by jobgraph (scancel)")
        return Outcome(AttemptStatus.ERROR, None, f"Slurm does not know job {handle.job_id} (it ended over "
                       f"MinJobAge ago, or never was) and it left no exit code in {handle.folder}")


    async def _squeue(self, ids: Sequence[str]) -> dict[str, SlurmJob]:
        code, out, err = await self._slurm(["squeue", "-h", "--states=all", f"--jobs={','.join(ids)}",
                                            "-O", SQUEUE_FORMAT])
        if code != 0:
            if "Invalid job id" in err:
                return {}  # squeue says this only when none of the ids is known
            raise RunnerError(f"squeue failed: {err.strip() or f'exit code {code}'}")
        return parse_squeue(out)

    async def _slurm(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        """Run one Slurm command without blocking the loop, in an environment with no SBATCH_*,
        SQUEUE_* or SLURM_* input variables (those change what the commands do or print, e.g. when
        jobgraph itself runs inside a Slurm job): the flags `jobgraph plan` shows are all there are."""
        env = sbatch_env() if argv[0] == "sbatch" else {
            name: value for name, value in os.environ.items()
            if not name.startswith(("SBATCH_", "SQUEUE_", "SCANCEL_", "SLURM_")) or name == "SLURM_CONF"}
        timeout = min(COMMAND_TIMEOUT, self._settings.controller_timeout)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        except OSError as exc:
            raise RunnerError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(process.communicate(None if stdin is None else stdin.encode()), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise RunnerError(f"{argv[0]} did not answer within {timeout:g}s") from None
        assert process.returncode is not None
        return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def build(_name: str, pipeline: Pipeline, settings: BaseModel | None, folder: Path,
          cwd: Path | None) -> SlurmRunner:
    """The registry's constructor, with the pipeline's `runners.slurm` settings."""
    return SlurmRunner(pipeline.images, settings if isinstance(settings, SlurmSettings) else SlurmSettings(),
                       folder, cwd=cwd)
