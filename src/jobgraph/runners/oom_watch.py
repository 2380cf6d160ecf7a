"""Whether the kernel's out-of-memory killer struck inside a running container: what `retry_on: [oom]` needs.

Podman 4.3 never sets `State.OOMKilled` (conmon's `oom` marker lands in its working directory, not
the container's), and when the OOM killer picks a child of the job's shell, the container exits with
whatever code the shell chose, not 137; a plain `kill -9` under a memory limit, on the other hand,
looks like an OOM kill. So, where jobgraph runs beside the engine (a local socket), the container
runner watches the container's memory cgroup while it runs, as conmon and containerd do: on cgroup v1
an eventfd registered on `memory.oom_control` through `cgroup.event_control` wakes the event loop at
each OOM, and the `oom_kill` counter is read at once (the cgroup is removed soon after the container
exits, so it cannot be read afterwards); on cgroup v2 the `oom_kill` line of `memory.events` is read
when the watch is armed and again when the container has exited, if the cgroup is still there.
Where none of this is possible (a remote engine, no permission), the runner falls back on the
engine's word and on "SIGKILL under a memory limit".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def memory_cgroup(pid: int) -> tuple[Path, int] | None:
    """The memory cgroup folder of a process and the cgroup version (1 or 2), or None if it cannot be found."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = CGROUP_ROOT / "memory" / path.lstrip("/")
            return (folder, 1) if folder.is_dir() else None
    for line in lines:
        if line.startswith("0::") and (CGROUP_ROOT / "cgroup.controllers").exists():
            folder = CGROUP_ROOT / line[3:].lstrip("/")
            return (folder, 2) if folder.is_dir() else None
    return None


def known_cgroup(container_id: str) -> tuple[Path, int] | None:
    """The memory cgroup where Podman (cgroupfs or systemd manager) or Docker puts a container, found without
    asking the engine; None if it is in none of those places (then its main process tells: `memory_cgroup`)."""
    places = (f"libpod_parent/libpod-{container_id}", f"machine.slice/libpod-{container_id}.scope",
              f"docker/{container_id}", f"system.slice/docker-{container_id}.scope")
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        found = [(CGROUP_ROOT / place, 2) for place in places]
    else:
        found = [(CGROUP_ROOT / "memory" / place, 1) for place in places]
    return next(((folder, version) for folder, version in found if folder.is_dir()), None)


def oom_kills(folder: Path, version: int) -> int | None:
    """How many processes the OOM killer killed in the cgroup so far; None if the cgroup (or the count) is gone."""
    name = "memory.oom_control" if version == 1 else "memory.events"
    try:
        text = (folder / name).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


class OomWatch:
    """The OOM kills in one container's memory cgroup, counted while it runs; `close` releases the watch."""

    def __init__(self, folder: Path, version: int) -> None:
        self.folder = folder
        self.version = version
        self.killed = (oom_kills(folder, version) or 0) > 0
        self.conclusive = False
        """Whether "no OOM kill" can be believed: the kernel would have woken the watch (cgroup v1's eventfd),
        or the counter was read once the container had ended (its cgroup was still there)."""
        self._eventfd: int | None = None
        self._control: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def arm(cls, found: tuple[Path, int] | None) -> OomWatch | None:
        """Start watching a container's memory cgroup (`known_cgroup`, `memory_cgroup`: blocking, so call it in a
        thread, then `listen` on the loop); None when there is none or it cannot be read."""
        if found is None or oom_kills(*found) is None:
            return None
        watch = cls(*found)
        if watch.version == 1:
            try:
                watch._register()
            except OSError:  # no permission to register: the counter is still read at the end, if it can be
                watch._close_fds()
        return watch

    def _register(self) -> None:
        self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._control = os.open(self.folder / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        with open(self.folder / "cgroup.event_control", "w") as control:
            control.write(f"{self._eventfd} {self._control}")

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the counter each time the kernel signals an OOM in the cgroup (cgroup v1's eventfd)."""
        if self._eventfd is not None:
            self._loop = loop
            loop.add_reader(self._eventfd, self._woken)
            self.conclusive = True

    def _woken(self) -> None:
        if self._eventfd is not None:
            with contextlib.suppress(OSError):
                os.eventfd_read(self._eventfd)
        self.check()

    def check(self) -> bool:
        """Whether an OOM kill happened, reading the counter once more if the cgroup still exists."""
        if not self.killed:
            count = oom_kills(self.folder, self.version)
            self.killed = (count or 0) > 0
            self.conclusive = self.conclusive or count is not None
        return self.killed

    def close(self) -> None:
        """Stop listening and close the file descriptors; harmless twice."""
        if self._loop is not None and self._eventfd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._eventfd)
        self._loop = None
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._eventfd, self._control):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._eventfd = self._control = None
