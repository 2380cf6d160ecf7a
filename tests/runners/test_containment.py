"""No process outlives its attempt: daemons a job starts (setsid, setsid -f, a double fork, setpgid) die with it.

Through `jobgraph run`, on both containment layers: the cgroup one (what this machine and CI give) and the
process one (subreaper + environment marker, forced with JOBGRAPH_CONTAINMENT=process), after a success, a
failure, a timeout, SIGINT and SIGTERM of jobgraph, and a kill -9 of jobgraph followed by the next run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobgraph.runners import cgroups, containment
from jobgraph.store import Store
from tests.conftest import Cli, WritePipeline, process_alive, sh, store_url

DAEMONS = 4
"""How many detached processes `spawn_daemons` starts, each writing its pid."""


def spawn_daemons(pids: Path, clear_env: bool = False) -> str:
    """A shell script that leaves a daemon every way a job can: setsid, setsid -f, a double fork, setpgid.

    With `clear_env`, one more daemon that also drops its environment (the marker): only cgroups hold it.
    """
    script = (
        f"setsid sleep 300 & echo $! >> {pids}; "
        f"setsid -f sh -c 'echo $$ >> {pids}; exec sleep 301'; "
        f"(sh -c 'sleep 302 & echo $! >> {pids}' &); "
        f"python3 -c 'import os; os.setpgid(0, 0); os.execvp(\"sleep\", [\"sleep\", \"303\"])' & echo $! >> {pids}; "
    )
    expected = DAEMONS
    if clear_env:
        script += f"env -i setsid -f sh -c 'echo $$ >> {pids}; exec sleep 304'; "
        expected += 1
    return script + f'until [ "$(wc -l < {pids})" -ge {expected} ]; do sleep 0.01; done; '


@pytest.fixture(params=["cgroup", "process"])
def layer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs once per containment layer; on CI the automatic choice must be the cgroup layer."""
    if request.param == "cgroup":
        if os.environ.get("CI") == "true":
            monkeypatch.setenv("JOBGRAPH_CONTAINMENT", "cgroup")
        else:
            monkeypatch.delenv("JOBGRAPH_CONTAINMENT", raising=False)
    else:
        monkeypatch.setenv("JOBGRAPH_CONTAINMENT", "process")
    monkeypatch.setenv("JOBGRAPH_KILL_GRACE", "2")
    return str(request.param)


def using_cgroups(layer: str) -> bool:
    return layer == "cgroup" and containment.containment().layer == "cgroup"


def assert_all_gone(pids: Path, expected: int) -> None:
    """Every pid the job wrote is dead, within a second (a SIGKILLed process takes a moment to go)."""
    written = [int(p) for p in pids.read_text().split()]
    assert len(written) == expected, written
    deadline = time.monotonic() + 1
    while any(process_alive(p) for p in written) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p for p in written if process_alive(p)] == [], "these processes of the job outlived it"


def assert_no_cgroup_left(run_id: str) -> None:
    base = cgroups.cgroup_base()
    if base is not None:
        assert list(base.glob(f"*/{run_id}")) == [], "the run's cgroups were not removed"


def the_run(tmp_path: Path) -> tuple[str, dict[str, str], set[str]]:
    """The last run's id, its jobs' states and its attempts' statuses."""
    store = Store(store_url(tmp_path))
    run = store.runs(1)[0]
    tasks = {t.task: t.state for t in store.tasks(run.run_id)}
    attempts = {a.status for a in store.attempts(run.run_id)}
    store.close()
    return run.run_id, tasks, attempts


def start_run(tmp_path: Path, path: Path, pids: Path, expected: int) -> subprocess.Popen[str]:
    """`jobgraph run` in the background; returns once the job wrote `expected` pids."""
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    env.pop("JOBGRAPH_STORE", None)
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while (not pids.exists() or len(pids.read_text().split()) < expected) and time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.communicate())
        time.sleep(0.02)
    return process


@pytest.mark.parametrize(("ending", "state", "status"), [
    ("exit 0", "SUCCEEDED", "DONE"),
    ("exit 3", "FAILED", "FAILED"),
    ("sleep 300", "FAILED", "TIMEOUT"),
])
def test_daemons_die_when_the_job_ends(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, layer: str,
                                       ending: str, state: str, status: str) -> None:
    pids = tmp_path / "pids"
    clear_env = using_cgroups(layer)
    job = sh("daemons", spawn_daemons(pids, clear_env) + ending, timeout=1)
    started = time.monotonic()
    cli("run", str(write_pipeline({"jobs": [job]})), check=0 if state == "SUCCEEDED" else 1)
    assert time.monotonic() - started < 15
    run_id, tasks, attempts = the_run(tmp_path)
    assert tasks == {"daemons": state} and attempts == {status}
    assert_all_gone(pids, DAEMONS + clear_env)
    assert_no_cgroup_left(run_id)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_daemons_die_when_jobgraph_is_cancelled(tmp_path: Path, write_pipeline: WritePipeline, layer: str,
                                                sig: signal.Signals) -> None:
    pids = tmp_path / "pids"
    clear_env = using_cgroups(layer)
    path = write_pipeline({"jobs": [sh("daemons", spawn_daemons(pids, clear_env) + "sleep 300")]})
    process = start_run(tmp_path, path, pids, DAEMONS + clear_env)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    run_id, tasks, attempts = the_run(tmp_path)
    assert tasks == {"daemons": "CANCELLED"} and attempts == {"CANCELLED"}
    assert_all_gone(pids, DAEMONS + clear_env)
    assert_no_cgroup_left(run_id)


def test_daemons_of_a_run_whose_jobgraph_was_killed_die_at_the_next_run(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, layer: str) -> None:
    pids = tmp_path / "pids"
    clear_env = using_cgroups(layer)
    path = write_pipeline({"jobs": [sh("daemons", spawn_daemons(pids, clear_env) + "sleep 300")]})
    process = start_run(tmp_path, path, pids, DAEMONS + clear_env)
    process.kill()
    process.communicate()
    written = [int(p) for p in pids.read_text().split()]
    assert all(process_alive(p) for p in written), "nothing can kill them before the next jobgraph starts"

    other = write_pipeline({"name": "other", "jobs": [sh("quick", "true")]}, name="other.yaml")
    result = cli("run", str(other), check=0)
    lost = Store(store_url(tmp_path)).runs(2)[1]
    assert lost.state == "CANCELLED"
    assert f"run {lost.run_id} of p: its jobgraph process died; killed" in result.stderr
    assert_all_gone(pids, DAEMONS + clear_env)
    assert_no_cgroup_left(lost.run_id)


def test_the_layer_in_use_is_said_once_when_it_is_not_the_cgroup_one(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBGRAPH_CONTAINMENT", "process")
    result = cli("run", str(write_pipeline({"jobs": [sh("a", "true"), sh("b", "true")]})), check=0)
    assert result.stderr.count("containing job processes without cgroups") == 1, result.stderr


@pytest.mark.parametrize(("name", "value", "message"), [
    ("JOBGRAPH_CONTAINMENT", "jail", "JOBGRAPH_CONTAINMENT='jail' is not one of auto, cgroup, process"),
    ("JOBGRAPH_KILL_GRACE", "soon", "JOBGRAPH_KILL_GRACE='soon' is not a number of seconds from 0 to 3600"),
])
def test_a_bad_setting_is_a_clear_error_and_runs_nothing(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, monkeypatch: pytest.MonkeyPatch,
        name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    result = cli("run", str(write_pipeline({"jobs": [sh("a", f"touch {tmp_path / 'ran'}")]})), check=1)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ran").exists()
    store = Store(store_url(tmp_path))
    [attempt] = store.attempts(store.runs(1)[0].run_id)
    assert attempt.status == "ERROR" and attempt.error == message


def test_daemons_of_a_nested_jobgraph_die_with_the_outer_job(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, layer: str) -> None:
    pids = tmp_path / "pids"
    inner = write_pipeline({"name": "inner", "jobs": [sh("daemons", spawn_daemons(pids) + "sleep 300")]},
                           name="inner.yaml")
    # the outer job ends once the inner one's daemons are all there, however slow a loaded host starts them
    outer = write_pipeline({"jobs": [sh("nest", f"JOBGRAPH_HOME={tmp_path / 'inner'} {sys.executable} -m jobgraph "
                                                f"run {inner} & until [ \"$(wc -l < {pids} 2>/dev/null)\" -ge "
                                                f"{DAEMONS} ]; do sleep 0.05; done; exit 3", timeout=120)]})
    cli("run", str(outer), check=1)
    _run_id, tasks, attempts = the_run(tmp_path)
    assert tasks == {"nest": "FAILED"} and attempts == {"FAILED"}
    assert_all_gone(pids, DAEMONS)


def cgroup_layer() -> containment.Containment:
    """The cgroup layer; on CI it must be there (like Podman), elsewhere its own tests are skipped."""
    layer = containment.containment()
    if layer.layer != "cgroup":
        if os.environ.get("CI") == "true":
            pytest.fail(f"the cgroup layer must work on CI: {layer.description}", pytrace=False)
        pytest.skip(layer.description)
    return layer


def test_without_cgroup_kill_the_cgroup_is_frozen_and_each_member_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = cgroup_layer()
    real_write = cgroups._write  # the one way the module writes a cgroup file

    def no_cgroup_kill(path: Path | str, value: str) -> None:
        if Path(path).name == "cgroup.kill":
            raise FileNotFoundError(path)
        real_write(path, value)

    monkeypatch.setattr(cgroups, "_write", no_cgroup_kill)
    pids = tmp_path / "pids"
    attempt = layer.attempt("run-freeze", "daemons", 1, {})
    with attempt.placing():
        main = subprocess.Popen(["sh", "-c", spawn_daemons(pids) + "sleep 300"], start_new_session=True)
    attempt.started(main.pid)
    deadline = time.monotonic() + 10
    while (not pids.exists() or len(pids.read_text().split()) < DAEMONS) and time.monotonic() < deadline:
        time.sleep(0.02)
    asyncio.run(attempt.end())
    assert main.wait(timeout=5) == -signal.SIGKILL
    assert_all_gone(pids, DAEMONS)
    layer.end_run("run-freeze")
    assert_no_cgroup_left("run-freeze")


def test_a_process_another_thread_forks_while_a_job_is_placed_is_sent_home(tmp_path: Path) -> None:
    layer = cgroup_layer()
    attempt = layer.attempt("run-stray", "job", 1, {})
    with attempt.placing():
        job = subprocess.Popen(["sleep", "300"], start_new_session=True)
        other = subprocess.Popen(["sleep", "301"])  # as if another thread of jobgraph forked just now
    attempt.started(job.pid)
    try:
        own = Path("/proc/self/cgroup").read_text()
        assert Path(f"/proc/{other.pid}/cgroup").read_text() == own
        assert Path(f"/proc/{job.pid}/cgroup").read_text() != own
        asyncio.run(attempt.end())
        assert job.wait(timeout=5) == -signal.SIGKILL and other.poll() is None
    finally:
        other.kill()
        other.wait()
        job.kill()
        job.wait()
    layer.end_run("run-stray")
    assert_no_cgroup_left("run-stray")


REAPER_CHECK = """
import asyncio, os, sys
from pathlib import Path
from jobgraph.runners import JobSpec
from jobgraph.runners.local import LocalRunner

async def main():
    runner = LocalRunner({"sh": ["sh", "-c"]}, kill_grace=1)
    for attempt, script in enumerate(sys.argv[1:], start=1):
        marker = {"JOBGRAPH_RUN_ID": "run-reap", "JOBGRAPH_TASK": "job", "JOBGRAPH_ATTEMPT": str(attempt)}
        spec = JobSpec("run-reap", "p", "job", attempt, "sh", (script,), marker, Path(f"attempt-{attempt}.log"))
        await runner.wait(await runner.start(spec))
    await runner.aclose()
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    print(" ".join(Path(f"/proc/{c}/stat").read_text().rsplit(") ", 1)[1][0] for c in children))

asyncio.run(main())
"""


def test_the_process_layer_reaps_the_orphans_it_adopts(tmp_path: Path) -> None:
    """As a subreaper, jobgraph adopts daemons whose parent died; once they exit it must reap them."""
    pids = tmp_path / "pids"
    lives = f"setsid sh -c 'echo $$ >> {pids}; sleep 300' & sleep 0.2"
    ends = f"(setsid sh -c 'echo $$ >> {pids}; sleep 0.1' &); sleep 0.5"
    env = {**os.environ, "JOBGRAPH_CONTAINMENT": "process"}
    result = subprocess.run([sys.executable, "-c", REAPER_CHECK, lives, ends], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], "jobgraph kept children (Z: zombies it never reaped)"
    assert_all_gone(pids, 2)
