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
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from jobgraph.errors import RunnerError
from jobgraph.owner import process_start_time
from jobgraph.runners.process_tree import (
    KILL_TIMEOUT,
    ProcessAttempt,
    become_subreaper,
    kill_marked_processes,
    parent_of,
)

LAYERS = ("auto", "cgroup", "process")
_PLAIN = re.compile(r"[A-Za-z0-9_$-]+")
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
            return CgroupAttempt(_run_cgroup(self.base, _owner(), run_id) / f"{_safe(task)}.{attempt}")
        fallback = {"JOBGRAPH_RUN_ID": run_id, "JOBGRAPH_TASK": task, "JOBGRAPH_ATTEMPT": str(attempt)}
        return ProcessAttempt(frozenset(f"{n}={env.get(n, fallback[n])}".encode() for n in MARKER))

    def end_run(self, run_id: str) -> None:
        """The run is over in this process: remove its cgroup folder, and this process's once it is empty."""
        if self.base is not None:
            owner = self.base / _owner()
            _remove_tree(owner / _safe(run_id))
            with contextlib.suppress(OSError):
                owner.rmdir()


@functools.lru_cache(maxsize=64)
def _run_cgroup(base: Path, owner: str, run_id: str) -> Path:
    """The cgroup folder of a run of this process, built once per run rather than once per attempt."""
    return base / owner / _safe(run_id)


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
        base, why = _usable_cgroup_base()
        if base is not None:
            atexit.register(lambda: _remove_tree(base / _owner()))  # for runners nobody closed
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


@dataclass
class CgroupAttempt:
    """An attempt in its own cgroup v2."""

    path: Path
    home: Path | None = None
    main: int | None = None

    def __post_init__(self) -> None:
        self._procs = f"{self.path}/cgroup.procs"  # the hot path's files, as strings built once

    @contextlib.contextmanager
    def placing(self) -> Iterator[None]:
        """jobgraph enters the attempt's cgroup while it forks the job (who inherits it), then leaves."""
        self.home = _own_cgroup()
        _make(self.path)
        try:
            _write(self._procs, "0")
        except OSError as exc:
            _remove_tree(self.path)
            raise RunnerError(f"cannot place the job in its cgroup {self.path}: {exc.strerror or exc}") from None
        try:
            yield
        except BaseException:
            _go_home(self.home)
            _remove_tree(self.path)
            raise
        _go_home(self.home)

    def started(self, pid: int) -> None:
        """Send home any other child of jobgraph that another thread forked while jobgraph was placing."""
        self.main = pid
        others = [other for other in _read_pids(self._procs) if other != pid]
        for other in others:
            if parent_of(other) == os.getpid() and self.home is not None:
                with contextlib.suppress(OSError):
                    _write(self.home / "cgroup.procs", str(other))

    def signal(self, sig: signal.Signals) -> None:
        """Signal each member of the cgroup (and of any cgroup a nested jobgraph made inside it)."""
        for pid in _cgroup_pids(self.path, nested=True):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def alive(self) -> bool:
        """Whether the cgroup still holds a live process (zombies do not count)."""
        return _populated(self.path)

    async def end(self) -> None:
        """Kill the cgroup, wait until it is empty, remove it."""
        deadline = time.monotonic() + KILL_TIMEOUT
        delay = 0.001
        while _populated(self.path) and time.monotonic() < deadline:
            _kill_cgroup(self.path)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        _remove_tree(self.path)


def kill_lost_run(run_id: str) -> int:
    """SIGKILL what a run whose jobgraph died left, in its cgroups or carrying its marker; say how many."""
    return _kill_cgroups_of_run(run_id) + kill_marked_processes(run_id)


def _kill_cgroups_of_run(run_id: str) -> int:
    """Kill and remove the cgroups of a run whose jobgraph died; return how many processes were killed."""
    killed = 0
    for run in _lost_cgroups():
        if run.name == _safe(run_id):
            killed += len(_cgroup_pids(run, nested=True))
            deadline = time.monotonic() + KILL_TIMEOUT
            while _populated(run) and time.monotonic() < deadline:
                _kill_cgroup(run)
                time.sleep(0.005)
    remove_empty_cgroups()
    return killed


def remove_empty_cgroups() -> None:
    """Remove the empty cgroups that dead jobgraph processes left (a kill -9, a test that never closed).

    A lost run's cgroups that still hold processes stay: the recovery of that run's store kills them.
    """
    for run in _lost_cgroups():
        if not _populated(run):
            _remove_tree(run)
    for base in _cgroup_bases():
        for owner in _children(base):
            if _owner_is_gone(owner.name):
                with contextlib.suppress(OSError):
                    owner.rmdir()


def _lost_cgroups() -> list[Path]:
    """The run cgroups of jobgraph processes that are gone."""
    return [run for base in _cgroup_bases() for owner in _children(base) if _owner_is_gone(owner.name)
            for run in _children(owner)]


def cgroup_base() -> Path | None:
    """Where this process would put its attempts' cgroups (None without a cgroup v2 hierarchy)."""
    mount = _cgroup2_mount()
    if mount is None:
        return None
    top = mount / "jobgraph"
    home = _own_cgroup()
    return home / "jobgraph" if top in home.parents else top


def _usable_cgroup_base() -> tuple[Path | None, str]:
    """The base if jobgraph can create, enter, leave and kill a cgroup there; else None and why not."""
    base = cgroup_base()
    if base is None:
        return None, "no cgroup v2 hierarchy is mounted"
    probe = base / _owner() / "probe"
    try:
        _make(probe)
        home = _own_cgroup()
        _write(probe / "cgroup.procs", "0")
        _write(home / "cgroup.procs", "0")
        if not (probe / "cgroup.kill").exists() and not (probe / "cgroup.freeze").exists():
            return None, f"{probe} has neither cgroup.kill nor cgroup.freeze"
    except OSError as exc:
        return None, f"{exc.filename or base}: {exc.strerror or exc}"
    finally:
        _remove_tree(probe)
    return base, ""


def _cgroup_bases() -> list[Path]:
    mount = _cgroup2_mount()
    bases = [mount / "jobgraph"] if mount is not None else []
    here = cgroup_base()
    return [*bases, here] if here is not None and here not in bases else bases


@functools.cache
def _cgroup2_mount() -> Path | None:
    try:
        with open("/proc/self/mountinfo") as mounts:
            for line in mounts:
                fields = line.split(" - ")
                if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
                    return Path(fields[0].split()[4])
    except OSError:
        pass
    return None


def _own_cgroup() -> Path:
    """jobgraph's own cgroup, read once per process (jobgraph only ever leaves it while it places a job)."""
    return _cgroup_of(os.getpid())


@functools.cache
def _cgroup_of(_pid: int) -> Path:
    mount = _cgroup2_mount()
    assert mount is not None
    with open("/proc/self/cgroup") as groups:
        for line in groups:
            if line.startswith("0::"):
                return mount / line[3:].strip().lstrip("/")
    raise OSError("no cgroup v2 entry in /proc/self/cgroup")


def _go_home(home: Path) -> None:
    """Leave the attempt's cgroup for jobgraph's own, or the root one if a manager removed ours meanwhile."""
    try:
        _write(home / "cgroup.procs", "0")
    except OSError:
        mount = _cgroup2_mount()
        assert mount is not None
        _write(mount / "cgroup.procs", "0")


def _kill_cgroup(path: Path) -> None:
    """SIGKILL every process in the cgroup tree: cgroup.kill, or freeze (no new forks) and kill each."""
    try:
        _write(path / "cgroup.kill", "1")
        return
    except FileNotFoundError:
        pass
    except OSError:
        return
    with contextlib.suppress(OSError):
        _write(path / "cgroup.freeze", "1")
    for pid in _cgroup_pids(path, nested=True):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _cgroup_pids(path: Path, nested: bool = False) -> list[int]:
    pids = _read_pids(f"{path}/cgroup.procs")
    if nested:
        for child in _children(path):
            pids += _cgroup_pids(child, nested=True)
    return pids


def _read_pids(procs: str) -> list[int]:
    try:
        with open(procs, "rb") as members:
            return [int(p) for p in members.read().split()]
    except OSError:
        return []


def _populated(path: Path) -> bool:
    try:
        with open(f"{path}/cgroup.events", "rb") as events:
            return b"populated 1" in events.read()
    except OSError:
        return False


def _children(path: Path) -> list[Path]:
    try:
        return [entry for entry in path.iterdir() if entry.is_dir() and not entry.is_symlink()]
    except OSError:
        return []


def _remove_tree(path: Path) -> None:
    """Remove a cgroup and the ones inside it, deepest first; a busy one stays (and says nothing)."""
    try:
        path.rmdir()
        return
    except OSError:
        pass
    for child in _children(path):
        _remove_tree(child)
    with contextlib.suppress(OSError):
        path.rmdir()


def _make(path: Path) -> None:
    """Create a cgroup, and its parents the first time (one system call in the usual case)."""
    try:
        path.mkdir()
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass


def _write(path: Path | str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _owner() -> str:
    """This jobgraph process, as a cgroup name that a reused pid cannot fool."""
    return _owner_of(os.getpid())


@functools.cache
def _owner_of(pid: int) -> str:
    return f"{pid}-{process_start_time(pid)}"


def _owner_is_gone(name: str) -> bool:
    pid, _, started = name.partition("-")
    return pid.isdigit() and process_start_time(int(pid)) != started


def _safe(name: str) -> str:
    """A run id or job name as one path component (job names are letters, digits, _ and $ already)."""
    if _PLAIN.fullmatch(name):
        return name
    return re.sub(r"[^A-Za-z0-9_$.-]", "_", name).lstrip(".") or "_"
