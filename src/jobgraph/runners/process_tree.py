"""The process layer of containment: an attempt's processes found in /proc, for when cgroups cannot be had.

An attempt's processes are those whose environment carries its marker (JOBGRAPH_RUN_ID, JOBGRAPH_TASK,
JOBGRAPH_ATTEMPT), the members of its main process's group and session, and all their descendants.
jobgraph is a child subreaper, so a daemon whose parent died is reparented to jobgraph, not to init:
it stays a descendant, and once it exits jobgraph reaps it. A process that clears its environment and
leaves the job's session after its parent died is not found: that is what the cgroup layer adds.

Each end of attempt looks at the processes started since the attempt's main process, not at every
process on the host (scanning all of /proc cost 1.5-2 ms per job with 100 processes). Every process of
an attempt is younger than its main process: its group and session are new, a descendant is younger
than its ancestor, and a marked process older than the main process is not the attempt's. Pids are
handed out in a circle (the next free one after the last, up to pid_max, then from the bottom again),
so the processes started since the main process have pids from the main's up to the last one handed
out, wrapping at pid_max. That holds while the circle has not come round to the main's pid again,
which the kernel's fork count proves: coming round takes at least pid_max minus the pids in use
allocations. When it cannot be proved (or /proc is not this process's pid namespace), the whole of
/proc is scanned, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

KILL_TIMEOUT = 10.0
"""How long a SIGKILLed attempt may take to be gone (a process in uninterruptible sleep takes a while)."""

_PR_SET_CHILD_SUBREAPER = 36
_FIRST_PID_AFTER_WRAP = 300
"""The kernel's RESERVED_PIDS: after a wrap, pids are handed out again from here."""
_SLACK = 1024
"""Allocations the counters may miss: those between the main process's fork and the reading of the count."""
_PROBE_AT_MOST = 64
"""A window of at most this many pids is tried pid by pid; a wider one is looked up in a listing of /proc."""


@dataclass(frozen=True)
class PidWindow:
    """Where the pids of processes started since a main process lie, as seen when it started."""

    first: int
    """The main process's pid."""
    forks: int
    """The kernel's fork count (every clone, threads included) just after the main process started."""
    tasks: int
    """The tasks (processes and threads) alive then."""

    def pids(self) -> list[int] | None:
        """The pids started since `first`, and `first` itself, that exist now; None when it cannot be proved."""
        now = _pid_counters()
        pid_max = _pid_max()
        if now is None or pid_max is None:
            return None
        last, forks, _ = now
        # Each allocation moves the cursor one pid, plus one per pid in use that it skips; those are at most
        # the tasks alive at the start plus those forked since. Below a full circle, the window is exact.
        if 2 * (forks - self.forks) + self.tasks + _FIRST_PID_AFTER_WRAP + _SLACK >= pid_max:
            return None
        first = self.first
        window = range(first, last + 1) if last >= first else [*range(first, pid_max), *range(1, last + 1)]
        if len(window) <= _PROBE_AT_MOST:
            return list(window)  # trying a few pids costs less than listing /proc
        if last >= first:
            return [pid for pid in _listed_pids() if first <= pid <= last]
        return [pid for pid in _listed_pids() if pid >= first or pid <= last]


@dataclass
class _Process:
    pid: int
    parent: int
    group: int
    session: int
    zombie: bool
    started: int
    """Clock ticks since boot."""

    @property
    def key(self) -> tuple[int, int]:
        """The process, in a way a reused pid cannot fool."""
        return self.pid, self.started


_MAINS: set[int] = set()
"""Main processes of this jobgraph's live attempts: their runner reaps them, so the orphan reaper must not."""


@dataclass
class ProcessAttempt:
    """An attempt found by its environment marker, its group and session, and their descendants."""

    marker: frozenset[bytes]
    main: int | None = None
    main_started: int = 0
    seen: set[tuple[int, int]] = field(default_factory=set)
    window: PidWindow | None = None

    def placing(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to do: the main process starts its own session and carries the marker."""
        return contextlib.nullcontext()

    def started(self, pid: int) -> None:
        """Remember the main process: its group and session are the job's, and nothing of it is older."""
        self.main = pid
        _MAINS.add(pid)
        counters = _pid_counters()
        if counters is not None:
            self.window = PidWindow(pid, counters[1], counters[2])
        process = _read_process(pid)
        self.main_started = process.started if process is not None else 0

    def signal(self, sig: signal.Signals) -> None:
        """Signal each live process of the attempt."""
        _signal_all(self._living(self._scan()), sig)

    def alive(self) -> bool:
        """Whether a live process of the attempt remains."""
        return bool(self._living(self._scan()))

    async def end(self) -> None:
        """SIGKILL every process of the attempt until none is left; reap the orphans left to jobgraph."""
        deadline = time.monotonic() + KILL_TIMEOUT
        delay = 0.001
        while time.monotonic() < deadline:
            processes = self._scan()
            _reap_orphans(processes)
            living = self._living(processes)
            if not living:
                break
            _signal_all(living, signal.SIGKILL)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        _reap_orphans(_scan(_own_children()))  # and those older than this attempt: an escaped daemon that exited
        _MAINS.discard(self.main or 0)  # no await from here until the runner reaps it

    def _scan(self) -> dict[int, _Process]:
        """The processes that can be the attempt's: those started since its main process, or every one."""
        return _scan(self.window.pids() if self.window is not None and _proc_is_ours() else None)

    def _living(self, processes: dict[int, _Process]) -> list[_Process]:
        roots = {self.main} if self.main is not None else set()
        members = _family(processes, lambda p, env: p.key in self.seen or p.group in roots or p.session in roots
                          or (p.started >= self.main_started and self.marker <= env()))
        self.seen.update(p.key for p in members)
        return [p for p in members if not p.zombie]


def kill_marked_processes(run_id: str) -> int:
    """SIGKILL every local job process whose environment names this run, their groups and descendants; say how many.

    Only processes the local runner started (JOBGRAPH_RUNNER=local): a remote runner's job of the same run
    that happens to run on this host (a single-node Slurm) is adopted, not killed.
    """
    marker = {f"JOBGRAPH_RUN_ID={run_id}".encode(), b"JOBGRAPH_RUNNER=local"}
    processes = _scan()
    groups = {p.group for p in _family(processes, lambda _p, env: marker <= env())} - {os.getpgid(0)}
    doomed = [p for p in _family(processes, lambda p, env: p.group in groups or marker <= env()) if not p.zombie]
    _signal_all(doomed, signal.SIGKILL)
    return len(doomed)


def _scan(pids: list[int] | None = None) -> dict[int, _Process]:
    """The processes of these pids that exist (every process on the host by default), from /proc."""
    processes = {}
    for pid in _listed_pids() if pids is None else pids:
        process = _read_process(pid)
        if process is not None:
            processes[pid] = process
    return processes


def _own_children() -> list[int]:
    """jobgraph's children, from each of its threads' /proc children list (none where the kernel lacks it)."""
    pids: list[int] = []
    try:
        for thread in os.listdir("/proc/self/task"):
            pids += [int(pid) for pid in _read_small(f"/proc/self/task/{thread}/children", 1 << 16).split()]
    except (OSError, ValueError):
        pass
    return pids


def _listed_pids() -> list[int]:
    return [int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()]


def _pid_counters() -> tuple[int, int, int] | None:
    """The last pid handed out in this pid namespace, the kernel's fork count and the tasks alive now."""
    try:
        loadavg = _read_small("/proc/loadavg", 256).split()  # "... running/tasks last_pid"
        stat = _read_small("/proc/stat", 1 << 16)  # a longer one fails the parse: a full scan
        start = stat.index(b"\nprocesses ") + len(b"\nprocesses ")
        forks = int(stat[start:stat.index(b"\n", start)])
        return int(loadavg[4]), forks, int(loadavg[3].split(b"/")[1])
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def _pid_max() -> int | None:
    try:
        return int(_read_small("/proc/sys/kernel/pid_max", 64))
    except (OSError, ValueError):
        return None


@functools.cache
def _proc_is_ours() -> bool:
    """Whether /proc shows this process's pid namespace (its pids are the ones os.getpid and fork give)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _read_small(path: str, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _family(processes: dict[int, _Process],
            is_seed: Callable[[_Process, Callable[[], frozenset[bytes]]], bool]) -> list[_Process]:
    """The processes that match `is_seed` (given a way to read each one's environment), and their descendants.

    Never jobgraph itself.
    """
    children: dict[int, list[_Process]] = {}
    for process in processes.values():
        children.setdefault(process.parent, []).append(process)
    found: dict[int, _Process] = {}
    stack = [p for p in processes.values()
             if p.pid != os.getpid() and is_seed(p, functools.partial(_environment, p))]
    while stack:
        process = stack.pop()
        if process.pid not in found and process.pid != os.getpid():
            found[process.pid] = process
            stack += children.get(process.pid, [])
    return list(found.values())


def _signal_all(processes: list[_Process], sig: signal.Signals) -> None:
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, sig)


def _reap_orphans(processes: dict[int, _Process]) -> None:
    """Reap the zombies reparented to jobgraph (its subreaper's duty); never a main process a runner awaits."""
    for process in processes.values():
        if process.zombie and process.parent == os.getpid() and process.pid not in _MAINS:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(process.pid, os.WNOHANG)


def _read_process(pid: int) -> _Process | None:
    """One process's /proc stat line; raw descriptor calls, as a scan reads one per process on the host."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            line = os.read(fd, 4096)
        finally:
            os.close(fd)
        fields = line.rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return _Process(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0] in (b"Z", b"X"),
                    int(fields[19]))


def _environment(process: _Process) -> frozenset[bytes]:
    """A process's environment entries (none for a zombie, or one that is gone or not ours to read)."""
    if process.zombie:
        return frozenset()
    try:
        with open(f"/proc/{process.pid}/environ", "rb") as environ:
            return frozenset(environ.read().split(b"\0"))
    except OSError:
        return frozenset()


def parent_of(pid: int) -> int | None:
    """The pid of a process's parent (None if it is gone)."""
    process = _read_process(pid)
    return process.parent if process is not None else None


def become_subreaper() -> str:
    """Make orphaned descendants of jobgraph its children, not init's; say whether that worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
            return "is their child subreaper"
        return f"cannot be their subreaper ({os.strerror(ctypes.get_errno())})"
    except (OSError, AttributeError) as exc:
        return f"cannot be their subreaper ({exc})"
