"""What the Slurm runner submits for one attempt: its settings, the `sbatch` flags and the batch script.

Kept apart from the runner so that `jobgraph plan` shows exactly what `start` submits: both build the
flags, the environment sbatch runs in, and the script here. The job's environment is exactly:

- what sbatch itself runs with, passed on by `--export=ALL`: only PATH, HOME and SLURM_CONF from
  jobgraph's environment (`sbatch_env`), so nothing else of jobgraph's leaks into the job;
- the job's own env, as an `export` block in the script (shell-quoted), not `--export=NAME=value,...`,
  which splits values at commas. The script reaches sbatch on its stdin, so no file holding a secret
  is written to the shared folder;
- the variables Slurm sets itself (SLURM_JOB_ID, ...).

`--export=NONE` was measured and not taken: on Slurm 22.05 it (like `--export=NAME`) makes slurmd load
the user's login environment on the node (`su -`), which cost 0.6 s per job here and brings in
whatever the login scripts set.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec
from jobgraph.runners.local import PYTHON_ALIASES
from jobgraph.runners.redaction import redactor_for

OUTPUT_FILE = "output.log"
EXIT_CODE_FILE = "exit_code"
RETURN_VALUE_FILE = "return_value"

PASSED_ENV = ("PATH", "HOME", "SLURM_CONF")
"""jobgraph's own variables sbatch runs with, and so the job: commands are found as the local runner finds
them, HOME is where tools expect it, and sbatch finds the cluster jobgraph was pointed at."""

RUNNER_OPTIONS = frozenset({
    "parsable", "job-name", "comment", "output", "error", "chdir", "export", "export-file", "time", "cpus-per-task",
    "mem", "mem-per-cpu", "mem-per-gpu", "partition", "account", "qos", "wrap", "wait", "array", "input",
    "open-mode", "container", "test-only", "hold", "get-user-env",
})
"""Options the runner sets itself, or that would change what one attempt is (an array, a held job, a
`--container` that silently runs outside the container without oci.conf): refused in extra_sbatch_args."""

_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SlurmName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s=,;|'\"\\\x00]+$")]


class SlurmSettings(BaseModel):
    """The `runners: {slurm: {...}}` section of a pipeline file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: SlurmName | None = Field(
        None, description="Slurm partition for every attempt (sbatch --partition); the cluster's default if unset.")
    account: SlurmName | None = Field(
        None, description="Slurm account charged for the attempts (sbatch --account); the user's default if unset.")
    qos: SlurmName | None = Field(
        None, description="Slurm quality of service for the attempts (sbatch --qos); the default if unset.")
    pool_partitions: dict[str, SlurmName] = Field(
        default_factory=dict, description="A jobgraph pool -> the Slurm partition its jobs go to (pools map to "
        "the cluster's capacity; the pool still caps how many attempts jobgraph has in flight). Pools not "
        "named here use `partition`.")
    poll_interval: float = Field(
        2.0, gt=0, le=600, description="Seconds between two polls. Each poll is one `squeue` call for all of "
        "jobgraph's jobs in flight, never one call per job.")
    controller_timeout: float = Field(
        120.0, gt=0, le=86400, description="Seconds Slurm may fail to answer before the attempts it holds are "
        "recorded as ERROR (the jobs themselves are left alone).")
    shared_dir: Path | None = Field(
        None, description="A folder on a filesystem the compute nodes share with jobgraph: each attempt's folder "
        "(output, exit code, return value) goes under it. Default: jobgraph's own folder.")
    extra_sbatch_args: tuple[str, ...] = Field(
        (), description="More sbatch options, each as one `--name=value` or `--flag` string (e.g. "
        "`--gres=gpu:1`, `--constraint=avx2`); options jobgraph sets itself are refused.")
    on_orchestrator_loss: Literal["adopt", "cancel"] = Field(
        "adopt", description="When jobgraph starts again after it died with attempts in Slurm: `adopt` waits "
        "for them and records their real end; `cancel` cancels them with scancel.")

    @field_validator("extra_sbatch_args")
    @classmethod
    def _check_extra(cls, args: tuple[str, ...]) -> tuple[str, ...]:
        for arg in args:
            if any(c in arg for c in "\n\r\0"):
                raise ValueError(f"{arg!r}: an sbatch option may not contain a line break or NUL")
            if not arg.startswith("--") or len(arg) < 3:
                raise ValueError(f"{arg!r}: write each option as one '--name=value' or '--flag' string "
                                 "(a separate value would be taken by sbatch as the script's path)")
            name = arg[2:].split("=", 1)[0]
            if name in RUNNER_OPTIONS:
                raise ValueError(f"{arg!r}: jobgraph sets --{name} itself (or it would change what one attempt "
                                 "is); use the job's or the runner's own settings")
        return args


def attempt_folder(shared_dir: Path, spec: JobSpec) -> Path:
    """Where one attempt's output, exit code and return value go: found again from the spec alone."""
    return shared_dir / "slurm" / spec.run_id / spec.task / f"attempt-{spec.attempt}"


def comment(spec: JobSpec) -> str:
    """The tag that says which attempt a Slurm job is (checked when an attempt is adopted)."""
    return f"jobgraph:{spec.run_id}/{spec.task}/{spec.attempt}"


def host_command(images: Mapping[str, Sequence[str]], spec: JobSpec) -> list[str]:
    """The job's own command or its image's, then the job's args, as the local runner runs them (python =
    jobgraph's Python)."""
    try:
        command = list(spec.command or images[spec.image])
    except KeyError:
        raise RunnerError(f"image '{spec.image}' has no command in the pipeline's 'images'") from None
    if command[0] in PYTHON_ALIASES:
        command[0] = sys.executable
    return command + list(spec.args)


@dataclass(frozen=True)
class NodeSize:
    """The largest node of the partition, as `sinfo` reports it (CPUs, MiB): what one job can get."""

    cpus: int
    mebibytes: int


def sbatch_argv(spec: JobSpec, settings: SlurmSettings, folder: Path, chdir: Path,
                largest: NodeSize | None = None) -> list[str]:
    """The sbatch command line for one attempt; the batch script goes to its stdin.

    CPUs and memory come from the pool, capped to the largest node when it is known.
    """
    output = str(folder / OUTPUT_FILE)
    argv = ["sbatch", "--parsable", f"--job-name=jobgraph.{spec.task}", f"--comment={comment(spec)}",
            f"--output={output}", f"--error={output}", f"--chdir={chdir}", "--export=ALL"]
    minutes, mebibytes = _time_minutes(spec), _mem_mebibytes(spec)
    if minutes:
        argv.append(f"--time={minutes}")
    if spec.cpu:
        cpus = max(1, math.ceil(spec.cpu))
        argv.append(f"--cpus-per-task={min(cpus, largest.cpus) if largest else cpus}")
    if mebibytes:
        argv.append(f"--mem={min(mebibytes, largest.mebibytes) if largest else mebibytes}M")
    partition = settings.pool_partitions.get(spec.pool, settings.partition)
    if partition:
        argv.append(f"--partition={partition}")
    for name in ("account", "qos"):
        value = getattr(settings, name)
        if value:
            argv.append(f"--{name}={value}")
    return argv + list(settings.extra_sbatch_args)


def resource_limits(spec: JobSpec) -> str:
    """The attempt's --cpus-per-task, --mem and --time in words, for the messages about what it asked."""
    minutes, mebibytes = _time_minutes(spec), _mem_mebibytes(spec)
    cpus = [f"--cpus-per-task={max(1, math.ceil(spec.cpu))}"] if spec.cpu else []
    return ", ".join(cpus + ([f"--mem={mebibytes}M"] if mebibytes else [])
                     + ([f"--time={minutes} min"] if minutes else []))


def _time_minutes(spec: JobSpec) -> int | None:
    """Slurm's limit is whole minutes: the job's timeout rounded up (jobgraph's own timer is exact).

    JobSpec gets an optional `timeout` field from the engine; until then there is none.
    """
    timeout: float | None = getattr(spec, "timeout", None)
    return max(1, math.ceil(timeout / 60)) if timeout else None


def _mem_mebibytes(spec: JobSpec) -> int | None:
    return max(1, math.ceil(spec.memory_bytes / (1 << 20))) if spec.memory_bytes else None


def sbatch_env() -> dict[str, str]:
    """The whole environment sbatch runs with (and passes on to the job with --export=ALL)."""
    return {name: os.environ[name] for name in PASSED_ENV if name in os.environ}


def batch_script(spec: JobSpec, command: Sequence[str], folder: Path, show_secrets: bool = True) -> str:
    """The script Slurm runs: the job's env, its command, then its exit code written as its last act.

    The exit code file carries the Slurm job id, so it is only believed for the job that wrote it; it
    outlives the controller's memory of the job (MinJobAge) and needs no accounting database. With
    `show_secrets=False` (for `jobgraph plan`) a secret value is shown as a `${NAME}` reference.
    """
    env = dict(spec.env)
    env["JOBGRAPH_RETURN_VALUE_FILE"] = str(folder / RETURN_VALUE_FILE)
    lines = ["#!/bin/sh", f"# jobgraph: pipeline {spec.pipeline}, run {spec.run_id}, job {spec.task}, "
             f"attempt {spec.attempt}", "jobgraph_slurm_job_id=$SLURM_JOB_ID"]
    for name, value in env.items():
        if not _SHELL_NAME.match(name):
            raise RunnerError(f"the Slurm runner cannot pass the variable {name!r}: its name is not a shell name")
        if not show_secrets and value in spec.secret_values:
            lines.append(f"export {name}=\"${{{name}}}\"")
        else:
            lines.append(f"export {name}={shlex.quote(_hide(value, spec, show_secrets))}")
    exit_file = shlex.quote(str(folder / EXIT_CODE_FILE))
    lines += [
        " ".join(shlex.quote(_hide(part, spec, show_secrets)) for part in command) + " </dev/null",
        "code=$?",
        f'echo "$jobgraph_slurm_job_id $code" > {exit_file}',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def _hide(text: str, spec: JobSpec, show_secrets: bool) -> str:
    return text if show_secrets else redactor_for(spec.secret_values).text(text)
