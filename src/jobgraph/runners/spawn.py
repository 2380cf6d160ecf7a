"""Start a job's main process cheaply: posix_spawn (vfork + exec, no Python in the child, no thread per child).

`subprocess.Popen` runs a few hundred lines of Python per process; `os.posix_spawn` hands glibc the
argv, the environment and three file actions (stdin from /dev/null, stdout and stderr onto the
capture pipe) and returns once the child has exec'd. The child starts its own session (setsid),
SIGPIPE and SIGXFSZ are back to their defaults (Popen's `restore_signals`), and it inherits no
descriptor but 0, 1 and 2, as Popen's `close_fds` gave: every descriptor Python, SQLite and libpq
open is close-on-exec already, and those jobgraph inherited without the flag are marked at the
runner's first start.

The call returns once the child has exec'd (vfork), so its time is mostly the child waiting for a CPU:
measured on 2 cores, 0.2 ms at the median with or without a cgroup, but a mean of 1.1 ms beside one
busy-looping process and 2.7 ms beside two (new tasks queue behind runnable ones). That is the host's
load, not jobgraph's work: jobgraph spends about 0.03 ms of CPU in the call.

posix_spawn has no working-folder action in Python 3.11, so a job whose folder is not jobgraph's own
(an API caller's `cwd`) starts through Popen: same guarantees, more Python. The executable is looked up
in the job's own PATH, as Popen does, and a failed start says why as Popen did ("No such file or
directory", "Permission denied").
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
"""Signals Python ignores that a job must get with their default action (Popen's restore_signals)."""


@dataclass
class Child:
    """A started main process; `reap` collects its exit status once, however it was started."""

    pid: int
    popen: subprocess.Popen[bytes] | None = None
    code: int | None = None

    def reap(self) -> int:
        """Wait for the process (it has exited, or is being killed) and return its exit code, -N for signal N."""
        if self.code is None:
            if self.popen is not None:
                self.code = self.popen.wait()
            else:
                _, status = os.waitpid(self.pid, 0)
                self.code = os.waitstatus_to_exitcode(status)
        return self.code


class Spawner:
    """Starts one runner's jobs: what can be learnt once per runner is learnt once.

    - Whether a job's working folder is jobgraph's own (then posix_spawn can start it) is checked per
      start, by device and inode, so another spelling of the folder (a link, a relative path) counts.
    - An executable found in a PATH is remembered for the runner's life, like a shell's command hash;
      if the exec fails (the file went away), it is looked up again once.
    - Descriptors jobgraph inherited without close-on-exec are marked at the first start.
    """

    def __init__(self, cwd: Path | None) -> None:
        self._cwd = cwd
        try:
            self._identity = _identity(os.stat(cwd)) if cwd is not None else None
        except OSError:
            self._identity = (-1, -1)  # let the start say why the folder is unusable
        self._found: dict[tuple[str, str], str] = {}
        self._marked = False

    def spawn(self, command: Sequence[str], env: Mapping[str, str], output: int) -> Child:
        """Start `command` in a new session, stdin from /dev/null, stdout and stderr on `output`; OSError if not."""
        if not self._in_our_folder() or output < 3:
            return _spawn_with_popen(command, env, output, self._cwd)
        if not self._marked:
            _close_on_exec_all()
            self._marked = True
        key = (command[0], env.get("PATH", os.defpath))
        try:
            return _posix_spawn(self._executable(key), command, env, output)
        except OSError:
            if self._found.pop(key, None) is None:
                raise
        return _posix_spawn(self._executable(key), command, env, output)

    def _in_our_folder(self) -> bool:
        if self._identity is None:
            return True
        try:
            return _identity(os.stat(".")) == self._identity
        except OSError:
            return False

    def _executable(self, key: tuple[str, str]) -> str:
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = _executable(*key)
        return found


def _posix_spawn(executable: str, command: Sequence[str], env: Mapping[str, str], output: int) -> Child:
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, output, 1), (os.POSIX_SPAWN_DUP2, output, 2)]
    pid = os.posix_spawn(executable, list(command), env, file_actions=actions, setsid=True,
                         setsigdef=_DEFAULT_SIGNALS)
    return Child(pid)


def _spawn_with_popen(command: Sequence[str], env: Mapping[str, str], output: int, cwd: Path | None) -> Child:
    popen = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                             env=env, cwd=cwd, start_new_session=True, close_fds=True)
    return Child(popen.pid, popen)


def _executable(name: str, search_path: str) -> str:
    """The file to exec for `name`, searched in the job's PATH as Popen does; OSError as Popen would raise."""
    if os.sep in name:
        return name
    denied = False
    for folder in search_path.split(os.pathsep):
        candidate = os.path.join(folder, name)
        try:
            mode = os.stat(candidate).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and os.access(candidate, os.X_OK):
            return candidate
        denied = True
    code = errno.EACCES if denied else errno.ENOENT
    raise OSError(code, os.strerror(code), name)


def _close_on_exec_all() -> None:
    """Mark every descriptor above 2 close-on-exec, so the job inherits none (what Popen's close_fds did)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino
