"""A real OOM kill in Podman under a pool's memory limit, told apart from a plain SIGKILL, and `retry_on: [oom]`
through `jobgraph run`: the container runner watches the container's memory cgroup (runners/oom_watch.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from jobgraph.states import AttemptStatus
from tests.conftest import Cli, WritePipeline
from tests.runners.conftest import TEST_IMAGE
from tests.runners.test_container import attempts, box, execute

pytestmark = pytest.mark.usefixtures("no_leftovers")

HUNGRY = "head -c 200m /dev/zero | tail"
"""tail keeps the last (endless) line in memory, touched page by page: over a 16 MiB limit, the kernel's OOM
killer kills it (dd's one big read is not that: its copy into an untouched buffer may just come back short)."""

KILL_9 = 'sleep 1; sh -c "kill -9 \\$\\$"; exit $?'
"""A process of the job SIGKILLs itself (not the container's PID 1, which no signal from inside can kill): the
shell exits 137, under a memory limit, with no OOM."""

TINY = {"tiny": {"max_parallel": 2, "memory": "16m"}}


def eventfds() -> int:
    """How many eventfds this process holds (the OOM watches' on cgroup v1)."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _link(fd) == "anon_inode:[eventfd]")


def _link(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return ""


def test_an_oom_kill_of_a_child_is_oom_and_a_kill_9_is_not(tmp_path: Path) -> None:
    jobs = [box("main", "sleep 1; exec tail /dev/zero", pool="tiny"),
            box("child", f"sleep 1; {HUNGRY}; echo tail ended $?; exit 1", pool="tiny"),
            box("killed", KILL_9, pool="tiny")]
    before = eventfds()
    _, events = execute(tmp_path, jobs, pools=TINY)
    assert eventfds() == before  # every watch let go of its cgroup
    main, child, killed = (attempts(events, name)[0] for name in ("main", "child", "killed"))
    assert (main.status, main.exit_code) == (AttemptStatus.FAILED, 137)
    assert main.error is not None and main.error.startswith(
        "OOMKilled: out of memory (memory limit 16 MiB): the kernel killed a process of the job, exit code 137")
    # the shell lived on and chose its own exit code: still an OOM kill, by the cgroup's count
    assert child.status == AttemptStatus.FAILED and child.exit_code in (1, 137)  # the shell may be killed next
    assert child.error is not None and child.error.startswith(
        "OOMKilled: out of memory (memory limit 16 MiB): the kernel killed a process of the job, exit code "
        f"{child.exit_code}")
    assert "tail ended 137" in child.error
    # SIGKILL under a memory limit, but not for memory: no longer taken for an OOM kill
    assert (killed.status, killed.exit_code) == (AttemptStatus.FAILED, 137)
    assert killed.error is not None and killed.error.startswith("exit code 137 (killed by SIGKILL, not for its memory)")


def test_retry_on_oom_through_jobgraph_run(cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    first_hungry = f"if [ -e /w/tried ]; then exit 0; fi; touch /w/tried; sleep 1; {HUNGRY}; exit 1"
    jobs = [{"name": "grows", "image": TEST_IMAGE, "args": ["sh", "-c", first_hungry], "pool": "tiny",
             "volumes": {"shared": "/w"}},
            {"name": "killed", "image": TEST_IMAGE, "args": ["sh", "-c", KILL_9], "pool": "tiny"}]
    write_pipeline({"pools": TINY, "defaults": {"runner": "podman", "network": "none", "retries": 2,
                                                "retry_on": ["oom", "lost"]}, "jobs": jobs})
    cli("run", "pipeline.yaml", check=1)
    with sqlite3.connect(tmp_path / ".jobgraph" / "jobgraph.db") as db:
        tried = db.execute("SELECT task, attempt, status, exit_code FROM attempts ORDER BY task, attempt").fetchall()
        errors = dict(db.execute("SELECT task, error_message FROM task_runs").fetchall())
    assert [row[:3] for row in tried] == [("grows", 1, "FAILED"), ("grows", 2, "DONE"), ("killed", 1, "FAILED")]
    assert tried[2][3] == 137
    assert errors["grows"] is None
    assert errors["killed"].startswith("attempt 1 FAILED, not retried: exit code 137 is not in retry_on [oom, lost]")
