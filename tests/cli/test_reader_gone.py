"""A run outlives its reader: `| head`, a pager that quits, or a closed terminal stop the output, never the run."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobgraph.states import RunState, TaskState
from jobgraph.store import Store
from tests.cli.test_service import holder_pid, wait_until
from tests.conftest import Cli, WritePipeline, process_alive, sh, store_url


def slow_pipeline(write_pipeline: WritePipeline, tmp_path: Path) -> Path:
    """Two jobs, the second long after the reader has gone; each leaves a file behind to prove it ran."""
    return write_pipeline({"jobs": [
        sh("first", f"echo $$ >> {tmp_path}/pids; sleep 0.5; echo first > {tmp_path}/first.out"),
        sh("second", f"echo $$ >> {tmp_path}/pids; sleep 0.5; echo second > {tmp_path}/second.out",
           after=["first"]),
    ]})


def assert_ran_to_the_end(tmp_path: Path) -> None:
    with Store(store_url(tmp_path)) as records:
        [run] = records.runs()
        assert run.state == RunState.SUCCEEDED
        assert {t.task: t.state for t in records.tasks(run.run_id)} == {
            "first": TaskState.SUCCEEDED, "second": TaskState.SUCCEEDED}
        assert all(a.finished_at is not None for a in records.attempts(run.run_id))
    assert (tmp_path / "first.out").read_text() == "first\n"
    assert (tmp_path / "second.out").read_text() == "second\n"
    for pid in (tmp_path / "pids").read_text().split():
        assert not process_alive(int(pid))


def test_a_closed_pipe_stops_the_output_and_the_run_goes_on(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = slow_pipeline(write_pipeline, tmp_path)
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    # `head -1` reads one line and quits, as `less` does on `q`: every later write meets a closed pipe.
    script = f"set -o pipefail; {sys.executable} -m jobgraph run {path} | head -1"
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "started" in result.stdout
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert_ran_to_the_end(tmp_path)


def test_a_closed_terminal_sighup_lets_the_run_go_on_like_nohup(tmp_path: Path,
                                                                 write_pipeline: WritePipeline) -> None:
    path = slow_pipeline(write_pipeline, tmp_path)
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "TERM": "xterm"}
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    deadline = time.monotonic() + 30
    while not (tmp_path / "pids").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.read(controller, 4096)  # the live view was drawing on the terminal
    os.close(controller)  # the terminal window closes ...
    process.send_signal(signal.SIGHUP)  # ... and its shell hangs up
    assert process.wait(timeout=60) == 0
    assert_ran_to_the_end(tmp_path)


def test_serve_whose_reader_went_away_keeps_serving(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "svc", "jobs": [sh("job", f"echo ran >> {tmp_path}/ran")]})
    cli("deploy", "pipeline.yaml", check=0)
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    script = f"set -o pipefail; {sys.executable} -m jobgraph serve --tick 0.1 | head -1"
    serve = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        for expected in ("ran\n", "ran\nran\n"):  # the first trigger meets a closed pipe, the second too
            cli("trigger", "svc", check=0)  # answers once the service started the run, not once it ended
            assert last_run_state(tmp_path) == RunState.SUCCEEDED
            assert (tmp_path / "ran").read_text() == expected
        with Store(store_url(tmp_path)) as records:
            pid = holder_pid(records)
        assert pid is not None
        os.kill(pid, signal.SIGHUP)  # and a hang-up does not stop it either
        cli("trigger", "svc", check=0)
        assert last_run_state(tmp_path) == RunState.SUCCEEDED
        assert (tmp_path / "ran").read_text() == "ran\nran\nran\n"
        os.kill(pid, signal.SIGTERM)
        _out, err = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
    assert serve.returncode == 0 and "Traceback" not in err, err


def last_run_state(tmp_path: Path) -> RunState:
    """The state of the newest run once it has ended (a trigger returns as soon as the run started)."""
    def ended() -> bool:
        with Store(store_url(tmp_path)) as records:
            return records.runs()[0].state != RunState.RUNNING
    wait_until(ended, seconds=60)
    with Store(store_url(tmp_path)) as records:
        return records.runs()[0].state
