"""The cgroup layer of containment: each attempt in its own cgroup v2, killed and removed as one.

Split from runners/containment.py, which chooses the layer (cgroup or process) and describes it; this
module is everything that touches the cgroup v2 hierarchy through its files: finding the mount and
jobgraph's own cgroup, placing a job, signalling and killing a cgroup's members, removing cgroups, and
finding those that a dead jobgraph process left (by their owner's pid and start time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jobgraph.errors import RunnerError
from jobgraph.owner import process_start_time
from jobgraph.runners.process_tree import KILL_TIMEOUT, parent_of

_PLAIN = re.compile(r"[A-Za-z0-9_$-]+")


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
            remove_tree(self.path)
            raise RunnerError(f"cannot place the job in its cgroup {self.path}: {exc.strerror or exc}") from None
        try:
            yield
        except BaseException:
            _go_home(self.home)
            remove_tree(self.path)
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
        remove_tree(self.path)


def kill_run_cgroups(run_id: str) -> int:
    """Kill and remove the cgroups of a run whose jobgraph died; return how many processes were killed."""
    killed = 0
    for run in _lost_cgroups():
        if run.name == safe_name(run_id):
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
            remove_tree(run)
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


def usable_base() -> tuple[Path | None, str]:
    """The base if jobgraph can create, enter, leave and kill a cgroup there; else None and why not."""
    base = cgroup_base()
    if base is None:
        return None, "no cgroup v2 hierarchy is mounted"
    probe = base / owner_name() / "probe"
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
        remove_tree(probe)
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


def remove_tree(path: Path) -> None:
    """Remove a cgroup and the ones inside it, deepest first; a busy one stays (and says nothing)."""
    try:
        path.rmdir()
        return
    except OSError:
        pass
    for child in _children(path):
        remove_tree(child)
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


def owner_name() -> str:
    """This jobgraph process, as a cgroup name that a reused pid cannot fool."""
    return _owner_of(os.getpid())


@functools.cache
def _owner_of(pid: int) -> str:
    return f"{pid}-{process_start_time(pid)}"


def _owner_is_gone(name: str) -> bool:
    pid, _, started = name.partition("-")
    return pid.isdigit() and process_start_time(int(pid)) != started


def safe_name(name: str) -> str:
    """A run id or job name as one path component (job names are letters, digits, _ and $ already)."""
    if _PLAIN.fullmatch(name):
        return name
    return re.sub(r"[^A-Za-z0-9_$.-]", "_", name).lstrip(".") or "_"
