"""The process layer looks only at processes started since the attempt's main process, and still finds all of it.

The daemons of every kind (setsid, setsid -f, double fork, setpgid) after every kind of end are
tests/runners/test_containment.py's, through the CLI; here: what the end of an attempt reads, and the
pid window across a wrap of the pid counter and when it cannot be proved.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobgraph.runners import process_tree
from jobgraph.runners.process_tree import PidWindow, ProcessAttempt
from tests.conftest import process_alive
from tests.runners.test_containment import REAPER_CHECK

MARKER = {"JOBGRAPH_RUN_ID": "run-window", "JOBGRAPH_TASK": "job", "JOBGRAPH_ATTEMPT": "1"}


def test_the_end_of_an_attempt_reads_only_processes_younger_than_its_main(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan of all of /proc per attempt cost 1.5-2 ms; an older process can never be the attempt's."""
    pidfile = tmp_path / "daemon"
    script = f"setsid -f sh -c 'echo $$ > {pidfile}; exec sleep 300'"
    main = subprocess.Popen(["sh", "-c", script], env={**os.environ, **MARKER}, start_new_session=True)
    attempt = ProcessAttempt(frozenset(f"{k}={v}".encode() for k, v in MARKER.items()))
    attempt.started(main.pid)
    main.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the daemon never started"
        time.sleep(0.01)
    daemon = int(pidfile.read_text())
    read: list[int] = []
    original = process_tree._read_process

    def recording(pid: int) -> process_tree._Process | None:
        read.append(pid)
        return original(pid)

    monkeypatch.setattr(process_tree, "_read_process", recording)
    try:
        assert attempt.alive()
        asyncio.run(attempt.end())
        assert not process_alive(daemon)
    finally:
        if process_alive(daemon):
            os.kill(daemon, 9)
    main_started = attempt.main_started
    own_children = set(process_tree._own_children())  # read on purpose: an escaped daemon that exited is reaped
    older = [pid for pid in set(read) - own_children
             if (p := original(pid)) is not None and p.started < main_started]
    assert daemon in read
    assert 1 not in read and os.getpid() not in read and older == []


def fake_counters(monkeypatch: pytest.MonkeyPatch, last: int, forks: int, pid_max: int = 32768) -> None:
    monkeypatch.setattr(process_tree, "_pid_counters", lambda: (last, forks, 150))
    monkeypatch.setattr(process_tree, "_pid_max", lambda: pid_max)


def test_a_window_across_the_wrap_of_the_pid_counter_covers_both_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_counters(monkeypatch, last=10, forks=1040)
    assert PidWindow(32740, 1000, 150).pids() == [*range(32740, 32768), *range(1, 11)]


def test_a_wide_window_keeps_only_the_listed_pids_inside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_tree, "_listed_pids", lambda: [1, 299, 500, 20000, 30000, 32000])
    fake_counters(monkeypatch, last=600, forks=5000)
    assert PidWindow(29000, 1000, 150).pids() == [1, 299, 500, 30000, 32000]
    fake_counters(monkeypatch, last=25000, forks=5000)
    assert PidWindow(10000, 1000, 150).pids() == [20000]


def test_a_window_the_fork_count_cannot_prove_means_a_scan_of_every_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After about pid_max forks the counter may have come round past the main's pid: the window proves nothing."""
    fake_counters(monkeypatch, last=12000, forks=1000 + 16000)
    assert PidWindow(11000, 1000, 150).pids() is None
    monkeypatch.setattr(process_tree, "_pid_counters", lambda: None)
    assert PidWindow(11000, 1000, 150).pids() is None


def test_the_counters_are_this_hosts() -> None:
    counters = process_tree._pid_counters()
    assert counters is not None
    last, forks, tasks = counters
    child = subprocess.Popen(["true"])
    child.wait()
    after = process_tree._pid_counters()
    assert after is not None and after[1] > forks and tasks > 0 and last > 0
    assert child.pid <= after[0] or child.pid > last  # the child's pid lies in the window, wrapped or not


def test_an_escaped_daemon_that_exits_later_is_reaped_at_the_next_attempts_end(tmp_path: Path) -> None:
    """Older than the next attempt, it is outside its pid window; jobgraph, its subreaper, must still reap it."""
    escapes = "(setsid env -i sh -c 'sleep 0.3' &); exit 0"
    later = "sleep 1"
    env = {**os.environ, "JOBGRAPH_CONTAINMENT": "process"}
    result = subprocess.run([sys.executable, "-c", REAPER_CHECK, escapes, later], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], "jobgraph kept children (Z: zombies it never reaped)"
