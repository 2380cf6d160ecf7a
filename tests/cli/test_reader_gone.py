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
from tests.conftest import WritePipeline, process_alive, sh, store_url


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
