"""Who orchestrates a run: this process, named so that pid reuse cannot fool a later check.

A run's record and its containers carry `host:pid:start-time`; when that process is gone, the run
was lost (kill -9, a crash) and what it left behind may be cleaned up.
"""

from __future__ import annotations

import os
import socket


def process_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("gone" for no such live process)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return "gone"
    return "gone" if fields[0] == "Z" else fields[19]


def owner_label() -> str:
    """This process, as `host:pid:start-time`."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start_time(os.getpid())}"


def owner_is_gone(label: str) -> bool:
    """True when the labelled process ran on this host and is no longer alive.

    An owner on another host cannot be checked from here, so it is never taken for gone.
    """
    host, _, rest = label.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return process_start_time(int(pid)) != started
