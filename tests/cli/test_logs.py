"""`jobgraph logs --follow`: a running attempt's output as it is written, each line once, on to the job's retries,
and stopped once the attempt has ended; never a log a job replaced by a link."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobgraph.cli.follow import _stop_if_lost
from jobgraph.states import AttemptStatus, RunState
from jobgraph.store import AttemptRecord, Store
from tests.cli.test_service import start_jobgraph, wait_until
from tests.cli.test_watch import EndsAsItsOwnerExits
from tests.conftest import Cli, WritePipeline, sh, store_url
from tests.runners.conftest import TEST_IMAGE, engine, no_leftovers  # noqa: F401 (the Podman test's fixtures)

TICKING = "for i in $(seq 1 10); do echo line $i; sleep 0.2; done"
"""A job that prints a numbered line every 0.2 s for 2 s."""


def follower(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`jobgraph logs ... --follow` in the background, its stdout and stderr apart."""
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    return subprocess.Popen([sys.executable, "-m", "jobgraph", "logs", *args, "--follow"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)  # communicate() sees all


def running_attempt(tmp_path: Path, job: str, number: int = 1) -> tuple[str, AttemptRecord]:
    """Wait for the job's attempt `number` to be RUNNING in the store; its run id and record."""
    found: list[tuple[str, AttemptRecord]] = []

    def started() -> bool:
        with Store(store_url(tmp_path)) as records:
            for run in records.runs(1):
                found[:] = [(run.run_id, a) for a in records.attempts(run.run_id, job) if a.attempt == number]
        return bool(found) and found[0][1].status == AttemptStatus.RUNNING

    wait_until(started)
    return found[0]


def attempt_status(tmp_path: Path, run_id: str, job: str, number: int) -> str:
    with Store(store_url(tmp_path)) as records:
        return next(str(a.status) for a in records.attempts(run_id, job) if a.attempt == number)


def test_follow_prints_each_line_once_as_it_comes_and_ends_with_the_attempt(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    run = start_jobgraph(tmp_path, "run", str(write_pipeline({"jobs": [sh("ticks", TICKING)]})))
    run_id, attempt = running_attempt(tmp_path, "ticks")
    follow = follower(tmp_path, run_id[:8], "ticks")
    assert follow.stdout is not None
    header = follow.stdout.readline().decode()
    assert header == f"# ticks attempt 1: RUNNING ({attempt.log_path})\n"
    first = follow.stdout.readline().decode()
    assert first.startswith("line ")
    assert attempt_status(tmp_path, run_id, "ticks", 1) == AttemptStatus.RUNNING  # streamed, not at the end
    wait_until(lambda: attempt_status(tmp_path, run_id, "ticks", 1) != AttemptStatus.RUNNING)
    ended = time.monotonic()
    follow.wait(timeout=30)
    assert time.monotonic() - ended < 5, "the follow went on after the attempt ended"
    out, err = follow.communicate(timeout=10)
    assert run.wait(timeout=60) == 0
    assert follow.returncode == 0, err
    assert err == b""
    assert [first.strip(), *out.decode().splitlines()] == [f"line {i}" for i in range(1, 11)]
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).state == RunState.SUCCEEDED
        [done] = records.attempts(run_id, "ticks")
        assert done.status == AttemptStatus.DONE and done.finished_at is not None
    assert done.log_path.read_bytes() == b"".join(f"line {i}\n".encode() for i in range(1, 11))


def test_follow_goes_on_to_the_retry_of_a_failed_attempt(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    script = (f"n=$(cat {tmp_path}/tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > {tmp_path}/tries; "
              "for i in 1 2 3 4 5; do echo try $n line $i; sleep 0.2; done; test $n -ge 2")
    run = start_jobgraph(tmp_path, "run", str(write_pipeline({"jobs": [sh("flaky", script, retries=1)]})))
    run_id, _ = running_attempt(tmp_path, "flaky")
    follow = follower(tmp_path, run_id, "flaky")
    out, err = follow.communicate(timeout=60)
    assert run.wait(timeout=60) == 0
    assert follow.returncode == 0, err
    with Store(store_url(tmp_path)) as records:
        first, second = records.attempts(run_id, "flaky")
    assert (first.status, second.status) == (AttemptStatus.FAILED, AttemptStatus.DONE)
    lines = out.decode().splitlines()
    assert lines == [f"# flaky attempt 1: RUNNING ({first.log_path})", *(f"try 1 line {i}" for i in range(1, 6)),
                     lines[6], *(f"try 2 line {i}" for i in range(1, 6))]
    assert lines[6].startswith("# flaky attempt 2: ") and lines[6].endswith(f"({second.log_path})")


def test_follow_of_a_finished_attempt_prints_it_and_ends_at_once(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    cli("run", str(write_pipeline({"jobs": [sh("says", "echo one; echo two")]})), check=0)
    run_id = Store(store_url(tmp_path)).runs(1)[0].run_id
    started = time.monotonic()
    result = cli("logs", run_id, "says", "--follow", check=0)
    assert time.monotonic() - started < 10
    assert result.stdout.splitlines()[1:] == ["one", "two"]
    assert result.stdout == cli("logs", run_id, "says", check=0).stdout
    assert cli("logs", run_id, "says", "--attempt", "1", "--follow", check=0).stdout == result.stdout


def test_follow_refuses_a_log_replaced_by_a_link(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    cli("run", str(write_pipeline({"jobs": [sh("says", "echo mine")]})), check=0)
    run_id = Store(store_url(tmp_path)).runs(1)[0].run_id
    log = Store(store_url(tmp_path)).attempts(run_id, "says")[0].log_path
    secret = tmp_path / "elsewhere"
    secret.write_text("not the job's to show\n")
    log.unlink()
    log.symlink_to(secret)
    result = cli("logs", run_id, "says", "--follow", check=2)
    assert "is not a regular file" in result.stderr and "not the job's" not in result.stdout
    assert "Traceback" not in result.stderr


def test_follow_stops_quietly_on_ctrl_c(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    run = start_jobgraph(tmp_path, "run", str(write_pipeline({"jobs": [sh("ticks", TICKING)]})))
    run_id, _ = running_attempt(tmp_path, "ticks")
    follow = follower(tmp_path, run_id, "ticks")
    assert follow.stdout is not None
    follow.stdout.readline()
    follow.send_signal(signal.SIGINT)
    _, err = follow.communicate(timeout=30)
    assert follow.returncode == 130 and b"Traceback" not in err and b"Aborted" not in err
    assert run.wait(timeout=60) == 0  # the run is not the follower's to stop


@pytest.mark.usefixtures("slurm")
def test_follow_of_a_slurm_attempt_says_once_that_its_output_comes_at_its_end_then_prints_it(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"runners": {"slurm": {"poll_interval": 0.2}},
                           "jobs": [sh("remote", TICKING.replace("0.2", "0.5"), runner="slurm")]})  # 5 s
    run = start_jobgraph(tmp_path, "run", str(path))

    def submitted() -> bool:
        with Store(store_url(tmp_path)) as records:
            tried = [a for r in records.runs(1) for a in records.attempts(r.run_id, "remote")]
        return bool(tried) and tried[0].backend_ref is not None and tried[0].status == AttemptStatus.RUNNING

    wait_until(submitted, 60)
    run_id = Store(store_url(tmp_path)).runs(1)[0].run_id
    follow = follower(tmp_path, run_id, "remote")
    out, err = follow.communicate(timeout=120)
    assert run.wait(timeout=60) == 0
    assert follow.returncode == 0, err
    with Store(store_url(tmp_path)) as records:
        [done] = records.attempts(run_id, "remote")
    assert done.status == AttemptStatus.DONE
    told = err.decode()
    assert told.count("its output is stored here when it ends") == 1 and f"({done.backend_ref})" in told
    assert out.decode().splitlines()[1:] == [f"line {i}" for i in range(1, 11)]


def test_follow_read_by_a_reader_that_leaves_early_ends_quietly(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    run = start_jobgraph(tmp_path, "run", str(write_pipeline({"jobs": [sh("talks", "seq 1 300000; sleep 5")]})))
    run_id, _ = running_attempt(tmp_path, "talks")
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    env.pop("JOBGRAPH_STORE", None)
    script = f"set -o pipefail; {sys.executable} -m jobgraph logs {run_id} talks --follow | head -2"
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "1" and result.stderr == ""
    assert attempt_status(tmp_path, run_id, "talks", 1) == AttemptStatus.RUNNING  # it left before the job ended
    assert run.wait(timeout=60) == 0


def test_follow_stops_when_the_process_running_the_run_is_killed(tmp_path: Path,
                                                                  write_pipeline: WritePipeline) -> None:
    job = sh("ticks", f"echo $$ > {tmp_path}/pid; {TICKING}; exec sleep 30")
    run = start_jobgraph(tmp_path, "run", str(write_pipeline({"jobs": [job]})))
    run_id, _ = running_attempt(tmp_path, "ticks")
    follow = follower(tmp_path, run_id, "ticks")
    assert follow.stdout is not None
    follow.stdout.readline()
    run.kill()
    run.wait(timeout=30)
    _, err = follow.communicate(timeout=30)
    with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)  # whatever the killed run left
    assert follow.returncode == 1
    assert b"is gone" in err and b"stopped following" in err and b"Traceback" not in err
    assert attempt_status(tmp_path, run_id, "ticks", 1) == AttemptStatus.RUNNING  # as the lost run left it


@pytest.mark.usefixtures("no_leftovers")
def test_follow_streams_a_podman_attempt_as_it_runs(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    boxed = {"name": "boxed", "image": TEST_IMAGE, "args": ["sh", "-c", TICKING], "runner": "podman",
             "network": "none"}
    run = start_jobgraph(tmp_path, "run", str(write_pipeline({"jobs": [boxed]})))
    run_id, _ = running_attempt(tmp_path, "boxed")
    follow = follower(tmp_path, run_id, "boxed")
    assert follow.stdout is not None
    follow.stdout.readline()
    first = follow.stdout.readline().decode()
    assert first.startswith("line ") and attempt_status(tmp_path, run_id, "boxed", 1) == AttemptStatus.RUNNING
    out, err = follow.communicate(timeout=60)
    assert run.wait(timeout=60) == 0
    assert follow.returncode == 0 and err == b""
    assert [first.strip(), *out.decode().splitlines()] == [f"line {i}" for i in range(1, 11)]
    assert attempt_status(tmp_path, run_id, "boxed", 1) == AttemptStatus.DONE


def test_following_a_run_that_ends_as_its_jobgraph_exits_is_not_taken_for_lost() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    records = EndsAsItsOwnerExits(f"{socket.gethostname()}:{gone.pid}:1")
    _stop_if_lost(records, "r1")  # type: ignore[arg-type]
    assert records.reads == 2
