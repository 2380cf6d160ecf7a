"""What Slurm says about a job, read from one `squeue` line, and how that becomes an attempt's Outcome.

The poll asks `squeue -h --states=all -j <ids> -O JobID:|,State:|,Reason:|,exit_code:|,Comment:`: the
state, its reason, the raw wait status (768 for `exit 3`, 9 for a SIGKILL; a `scontrol show job`
`ExitCode=3:0` in one number) and the comment that says which attempt the job is, for every job the
controller still holds (`MinJobAge`, 300 s by default, after its end), in one call.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from jobgraph.runners.base import Cause, Outcome
from jobgraph.states import AttemptStatus

NEVER_STARTS = frozenset({
    "PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "InvalidAccount",
    "InvalidQOS", "QOSMaxCpuPerJobLimit", "QOSMaxMemoryPerJob", "AssocMaxCpuPerJobLimit",
    "AssocMaxMemPerJobLimit",
})
"""Pending reasons that mean the job asks for what the cluster can never give it: waiting would be forever."""

SQUEUE_FORMAT = "JobID:|,State:|,Reason:|,exit_code:|,Comment:"
"""An empty width after the colon means no padding and no truncation; '|' ends each field."""

ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
    "RESIZING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD",
})
"""Slurm's job states that are not an end: COMPLETING still has processes to clean up."""

ENGINE_ENDS = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})
"""Ends that say nothing about the job itself: an ERROR, so the attempt is retried."""

LOST_ENDS = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})
"""Of those, the ones where the node was lost or taken back: `lost` in retry_on."""

OOM_MARKERS = ("exceeded job memory limit", "exceeded memory limit", "oom-kill", "oom_kill")
"""What slurmstepd writes into the job's output when it kills the job for its memory (jobacct_gather's
OverMemoryKill ends the job FAILED, signal 9, not OUT_OF_MEMORY; cgroup clusters report OUT_OF_MEMORY)."""


@dataclass(frozen=True)
class SlurmJob:
    """One job as squeue shows it."""

    job_id: str
    state: str
    reason: str
    wait_status: int | None
    comment: str


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    """The jobs in squeue's output, by id; lines that are not ours (or are garbled) are left out."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        parts = line.split("|", 4)
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        job_id, state, reason, status, note = parts
        state = state.split()[0] if state.strip() else "UNKNOWN"
        wait_status = int(status) if status.strip().isdigit() else None
        jobs[job_id] = SlurmJob(job_id, state, reason.strip(), wait_status, note.strip())
    return jobs


def exit_code_of(wait_status: int | None) -> tuple[int | None, int | None]:
    """(exit code, signal) from a raw wait status: a signal N shows as exit code 128+N, as a shell has it."""
    if wait_status is None:
        return None, None
    if wait_status & 0x7F:
        return 128 + (wait_status & 0x7F), wait_status & 0x7F
    return (wait_status >> 8) & 0xFF, None


def outcome_of(job: SlurmJob, exit_file: int | None, cancelled: bool, log_tail: str,
               limits: str = "") -> Outcome:
    """How an ended job's attempt ended.

    `exit_file` is the exit code the batch script wrote as its last act (None if it was killed
    first), believed only where Slurm gives no wait status (the job itself could have written it);
    `cancelled` says jobgraph cancelled it, so the FAILED 0:15 of a `scancel --signal=TERM` is a
    CANCELLED; `log_tail` is read for slurmstepd's memory-limit kill; `limits` names the attempt's
    --mem/--time for the messages.
    """
    code, sig = exit_code_of(job.wait_status)
    if exit_file is not None and job.wait_status is None:  # Slurm's own word first: a job can write the file
        code, sig = exit_file, None
    killed = f"killed by {_signal_name(sig)}" if sig else None
    known = code if exit_file is not None or sig else None
    where = f" ({limits})" if limits else ""
    if job.state == "COMPLETED":
        return Outcome(AttemptStatus.DONE, 0)
    if cancelled:
        return Outcome(AttemptStatus.CANCELLED, known, f"cancelled by jobgraph (scancel); Slurm says {job.state}")
    if job.state == "CANCELLED":
        return Outcome(AttemptStatus.CANCELLED, known, f"cancelled in Slurm (state CANCELLED, {job.reason})")
    if job.state == "TIMEOUT":
        return Outcome(AttemptStatus.TIMEOUT, known, f"Slurm's time limit was reached{where}: state TIMEOUT")
    oom_in_log = exit_file is None and any(marker in log_tail.lower() for marker in OOM_MARKERS)
    if job.state == "OUT_OF_MEMORY" or (job.state == "FAILED" and oom_in_log):
        return Outcome(AttemptStatus.FAILED, code, f"out of memory{where}: Slurm killed the job "
                       f"(state {job.state}{', ' + killed if killed else ''})", cause=Cause.OOM)
    if job.state in ENGINE_ENDS:
        return Outcome(AttemptStatus.ERROR, code, f"Slurm ended the job {job.state} ({job.reason}): "
                       "not the job's fault, so it may be retried",
                       cause=Cause.LOST if job.state in LOST_ENDS else None)
    if job.state == "FAILED":
        if killed:
            return Outcome(AttemptStatus.FAILED, code, f"{killed} (Slurm state FAILED, {job.reason})")
        if exit_file is None and not code:
            return Outcome(AttemptStatus.ERROR, code, f"Slurm could not run the job (state FAILED, {job.reason})")
        return Outcome(AttemptStatus.FAILED, code, f"exit code {code}")
    return Outcome(AttemptStatus.ERROR, code, f"Slurm ended the job in state {job.state} ({job.reason})")


def _signal_name(number: int | None) -> str:
    try:
        return signal.Signals(number or 0).name
    except ValueError:
        return f"signal {number}"
