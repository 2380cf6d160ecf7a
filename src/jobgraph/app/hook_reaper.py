"""Run one notify command hook so that nothing it starts outlives it: `python -m jobgraph.app.hook_reaper ARGV...`.

A hook may leave daemons behind (`cmd &`, `setsid`, a double fork, SIGTERM ignored): a process group cannot
hold them. This small process is the hook's parent and its child subreaper, so every orphan the hook leaves
is re-parented to it, whatever session it made. When the hook's main process exits, or this process gets
SIGTERM (the notify timeout, or jobgraph's death: the parent-death signal), it SIGKILLs every descendant it
has and reaps them, then exits with the hook's code. Only the standard library: it starts once per hook.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1
PARENT_VARIABLE = "JOBGRAPH_HOOK_PARENT"
"""The pid of the jobgraph that started this reaper, so that one that died first is noticed."""
CANNOT_RUN = 127
"""The exit code when the hook itself cannot be started; its reason is the last line on stderr."""
CANNOT_RUN_PREFIX = "jobgraph-hook: cannot run: "
KILL_SECS = 5.0


class _Stop(Exception):
    """SIGTERM, SIGINT or SIGHUP arrived: the hook is over its time."""


def _stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def main(argv: list[str]) -> int:
    """Run `argv` with this process's stdin, stdout and stderr; kill what it leaves; return its exit code."""
    code = 128 + signal.SIGTERM
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _stop)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)  # jobgraph killed -9: the hook is over too
        if os.getppid() != _parent():
            return code  # jobgraph died before the line above: start nothing
        try:
            hook = subprocess.Popen(argv)
        except OSError as exc:
            print(f"{CANNOT_RUN_PREFIX}{exc.strerror or type(exc).__name__}", file=sys.stderr)
            return CANNOT_RUN
        returned = hook.wait()
        code = returned if returned >= 0 else 128 - returned
    except _Stop:
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        kill_descendants()
    return code


def _parent() -> int:
    try:
        return int(os.environ.pop(PARENT_VARIABLE, ""))
    except ValueError:
        return os.getppid()


def kill_descendants() -> None:
    """SIGKILL every descendant of this process and reap the children, until none is left (or KILL_SECS)."""
    deadline = time.monotonic() + KILL_SECS
    while time.monotonic() < deadline:
        found = _descendants(os.getpid())
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        reaped = _reap()
        if not found and not reaped:
            return
        time.sleep(0.01)


def _reap() -> bool:
    """Collect every child that has exited; whether there was any child at all."""
    any_child = False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return any_child
        any_child = True
        if pid == 0:
            return True


def _descendants(root: int) -> list[int]:
    """The live processes below `root`, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
