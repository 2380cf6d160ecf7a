"""How a container's attempt ended, from its exit code, the engine's state of it and its OOM watch.

Split from runners/container.py: the rules that tell an out-of-memory kill (for `retry_on: [oom]`) from
any other exit, where no engine tells it reliably (Podman 4.3 never sets OOMKilled; see oom_watch.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobgraph.runners.base import Cause, JobSpec, Outcome
from jobgraph.runners.oom_watch import OomWatch
from jobgraph.states import AttemptStatus


def outcome_of(spec: JobSpec, code: int, state: Mapping[str, Any], oom: OomWatch | None = None) -> Outcome:
    """How an attempt that exited with `code` ended, from the engine's state of its container and, where its
    memory cgroup was watched, whether the OOM killer struck in it (a child of the job's included)."""
    if code == 0:
        return Outcome(AttemptStatus.DONE, 0)
    limit = f"memory limit {spec.memory_bytes // (1 << 20)} MiB" if spec.memory_bytes else ""
    if state.get("OOMKilled"):
        reason = f"OOMKilled: out of memory ({limit or 'no limit'}), exit code {code}"
        return Outcome(AttemptStatus.FAILED, code, reason, cause=Cause.OOM)
    if oom is not None and (oom.killed or oom.conclusive):  # the cgroup's count is the answer, whatever the code
        if oom.killed:
            return Outcome(AttemptStatus.FAILED, code, f"OOMKilled: out of memory ({limit or 'no limit'}): the kernel "
                           f"killed a process of the job, exit code {code}", cause=Cause.OOM)
        return Outcome(AttemptStatus.FAILED, code, f"exit code {code}" + (
            " (killed by SIGKILL, not for its memory)" if code == 137 else ""))
    if code == 137 and limit:
        # Podman 4.3 never sets OOMKilled here: a SIGKILL under a memory limit is the kernel's OOM killer.
        return Outcome(AttemptStatus.FAILED, code, f"killed (exit code 137) under a {limit}: out of memory",
                       cause=Cause.OOM)
    return Outcome(AttemptStatus.FAILED, code, f"exit code {code}")
