"""Contain every process of one job attempt, so that none outlives it, whatever it does with sessions.

A job may start daemons: `setsid`, `setsid -f`, a double fork, `setpgid`. A process group cannot hold
them; these layers can. `containment()` picks one per jobgraph process, from JOBGRAPH_CONTAINMENT:

- `cgroup` (chosen by default when it works: a cgroup v2 hierarchy is mounted and jobgraph may create
  and enter cgroups there, normally as root): each attempt runs in its own cgroup,
  `<cgroup2 mount>/jobgraph/<jobgraph pid>-<its start time>/<run id>/<job>.<attempt>` (nested under
  jobgraph's own cgroup when jobgraph is itself a contained job). No process can leave its cgroup, by
  any session or group trick. Ending the attempt writes `cgroup.kill` (before Linux 5.14: freezes the
  cgroup and SIGKILLs each member), waits until the cgroup is empty and removes it. After a kill -9 of
  jobgraph, `kill_lost_run` finds the lost run's cgroups by name and does the same. Placing a job costs
  two small writes: jobgraph enters the attempt's cgroup just while it spawns the job, then goes back
  (and sends back any process another of its threads forked meanwhile). So the job is born in its
  cgroup: not one instruction of it, nor of a child it forks at once, runs outside. Moving the job's
  pid in after posix_spawn returns would leave that window open (the job has exec'd by then and may
  already have forked); an exec wrapper that moves itself first would close it at the price of a
  second exec per job; clone3's CLONE_INTO_CGROUP would do both writes' work in the kernel but needs
  glibc 2.39's posix_spawnattr_setcgroup_np, which Python does not expose. On a host busy forking,
  each write can wait a few ms for the kernel's cgroup lock (measured: 0.05 ms idle, up to 3 ms at a
  load of 12 on 2 cores; the cgroup2 mount option `favordynmods` is meant to shorten it, untested here).
- `process` (the fallback, said once on stderr; or asked for), in process_tree: jobgraph becomes a
  child subreaper and, when the attempt ends, SIGKILLs until none is left every process that carries
  the attempt's environment marker (JOBGRAPH_RUN_ID, JOBGRAPH_TASK, JOBGRAPH_ATTEMPT), is in the job's
  process group or session, or descends from one of those, and reaps the orphans it adopted. Its gap:
  a process that clears its environment and leaves the job's session, after its parent died, is not
  found. Each end of attempt reads only the processes started since the attempt's main process (the pids
  handed out since its own, which the kernel's fork count proves), not all of /proc.
- `auto` (the default): `cgroup` if it works, else `process`. `cgroup` alone fails the job's attempt
  with the reason when cgroups cannot be had.

This module chooses and describes the layer; the cgroup layer itself is cgroups.py's.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from jobgraph.errors import RunnerError
from jobgraph.runners.cgroups import CgroupAttempt, kill_run_cgroups, owner_name, remove_tree, safe_name, usable_base
from jobgraph.runners.process_tree import ProcessAttempt, become_subreaper, kill_marked_processes

LAYERS = ("auto", "cgroup", "process")
MARKER = ("JOBGRAPH_RUN_ID", "JOBGRAPH_TASK", "JOBGRAPH_ATTEMPT")
"""The environment variables that name a job's attempt: the process layer's (and recovery's) marker."""

class Attempt(Protocol):
    """The processes of one attempt, as one thing to place, signal and end."""

    def placing(self) -> contextlib.AbstractContextManager[None]:
        """Around the start of the job's main process, so that it lands in the attempt."""
        ...

    def started(self, pid: int) -> None:
        """The main process was started with this pid."""
        ...

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to every live process of the attempt."""
        ...

    def alive(self) -> bool:
        """True while any process of the attempt is alive."""
        ...

    async def end(self) -> None:
        """Kill every process of the attempt, return once they are gone, and release what held them."""
        ...


@dataclass(frozen=True)
class Containment:
    """The layer this jobgraph process uses, and how it describes itself."""

    layer: str
    description: str
    base: Path | None = None

    def attempt(self, run_id: str, task: str, attempt: int, env: Mapping[str, str]) -> Attempt:
        """The containment of one attempt; `env` is the job's, which carries the marker."""
        if self.base is not None:
            return CgroupAttempt(_run_cgroup(self.base, owner_name(), run_id) / f"{safe_name(task)}.{attempt}")
        fallback = {"JOBGRAPH_RUN_ID": run_id, "JOBGRAPH_TASK": task, "JOBGRAPH_ATTEMPT": str(attempt)}
        return ProcessAttempt(frozenset(f"{n}={env.get(n, fallback[n])}".encode() for n in MARKER))

    def end_run(self, run_id: str) -> None:
        """The run is over in this process: remove its cgroup folder, and this process's once it is empty."""
        if self.base is not None:
            owner = self.base / owner_name()
            remove_tree(owner / safe_name(run_id))
            with contextlib.suppress(OSError):
                owner.rmdir()


@functools.lru_cache(maxsize=64)
def _run_cgroup(base: Path, owner: str, run_id: str) -> Path:
    """The cgroup folder of a run of this process, built once per run rather than once per attempt."""
    return base / owner / safe_name(run_id)


def containment() -> Containment:
    """This process's containment layer, chosen once (JOBGRAPH_CONTAINMENT: auto, cgroup or process)."""
    return _layer_for(os.environ.get("JOBGRAPH_CONTAINMENT"))


@functools.lru_cache(maxsize=8)
def _layer_for(setting: str | None) -> Containment:
    """The layer a setting asks for; cached, as every start asks (a bad setting is never cached: it raises)."""
    wanted = (setting or "auto").strip().lower() or "auto"
    if wanted not in LAYERS:
        raise RunnerError(f"JOBGRAPH_CONTAINMENT={wanted!r} is not one of {', '.join(LAYERS)}")
    return _chosen(wanted)


@functools.cache
def _chosen(wanted: str) -> Containment:
    if wanted != "process":
        base, why = usable_base()
        if base is not None:
            atexit.register(lambda: remove_tree(base / owner_name()))  # for runners nobody closed
            return Containment("cgroup", f"cgroup v2 per attempt under {base}", base)
        if wanted == "cgroup":
            raise RunnerError(f"JOBGRAPH_CONTAINMENT=cgroup, but no cgroup can be used: {why}")
        why = f"cgroups cannot be used ({why})"
    else:
        why = "JOBGRAPH_CONTAINMENT=process"
    reaper = become_subreaper()
    description = (f"containing job processes without cgroups: {why}; jobgraph {reaper} and kills by the "
                   "JOBGRAPH_RUN_ID/TASK/ATTEMPT marker, process group and session, so a daemon that also "
                   "clears its environment can escape")
    print(f"jobgraph: {description}", file=sys.stderr)
    return Containment("process", description)


def kill_lost_run(run_id: str) -> int:
    """SIGKILL what a run whose jobgraph died left, in its cgroups or carrying its marker; say how many."""
    return kill_run_cgroups(run_id) + kill_marked_processes(run_id)
