"""`jobgraph show RUN --watch`: a run of another process redrawn from the store until it ends, then shown, with the
run's exit code; piped, a line per change; as JSON, the document once the run has ended; a lost run stops it."""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from jobgraph.cli import watch as watching
from jobgraph.states import RunState
from jobgraph.store import Store
from jobgraph.store.records import RunRecord, TaskRecord
from tests.cli.test_render import read_terminal_until
from tests.conftest import Cli, WritePipeline, process_alive, sh, store_url
from tests.web.test_metrics import until


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "TERM": "xterm", "COLUMNS": "160",
           "LINES": "40"}
    env.pop("JOBGRAPH_STORE", None)
    return env


def _start_run(tmp_path: Path, path: Path) -> tuple[subprocess.Popen[str], str]:
    """`jobgraph run` in the background (another process), once its run is RUNNING with a job started."""
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=_env(tmp_path),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = store_url(tmp_path)
    until(lambda: Path(url.removeprefix("sqlite:///")).exists(), "the run never made its store")
    with Store(url) as records:
        until(lambda: bool(records.running_runs()) and bool(records.attempts(records.running_runs()[0].run_id)),
              "the run never started a job")
        return process, records.running_runs()[0].run_id


def _waiting(release: Path, then: str) -> str:
    return f'echo "waiting for {release.name}"; while [ ! -e "{release}" ]; do sleep 0.02; done; {then}'


def test_watch_on_a_terminal_redraws_a_run_of_another_process_until_it_ends(tmp_path: Path,
                                                                            write_pipeline: WritePipeline) -> None:
    release = tmp_path / "release"
    path = write_pipeline({"jobs": [sh("slow", _waiting(release, "echo 'giving up'; exit 3")),
                                    sh("after", "echo never", after=["slow"])]})
    runner, run_id = _start_run(tmp_path, path)
    controller, terminal = pty.openpty()
    watcher = subprocess.Popen([sys.executable, "-m", "jobgraph", "show", run_id[:8], "--watch"], cwd=tmp_path,
                               env=_env(tmp_path), stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = bytearray()
    try:
        read_terminal_until(controller, shown, b"waiting for release")  # the running job's last line
        assert watcher.poll() is None
        release.touch()
        read_terminal_until(controller, shown, b"attempts")  # the closing tables, once the run has ended
        assert watcher.wait(timeout=60) == 1  # the run FAILED: as `jobgraph run` exits
        assert runner.wait(timeout=60) == 1
    finally:
        for process in (watcher, runner):
            if process.poll() is None:
                process.kill()
                process.wait()
        os.close(controller)
    text = shown.decode(errors="replace")
    live = next(line for line in text.splitlines() if "waiting for release" in line)
    assert "slow" in live and "RUNNING" in live
    assert f"run {run_id} of p: FAILED" in text and "giving up" in text


def test_watch_piped_prints_a_line_per_change_then_the_run(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    release = tmp_path / "release"
    path = write_pipeline({"jobs": [sh("slow", _waiting(release, "echo done")), sh("next", "echo next",
                                                                                    after=["slow"])]})
    runner, run_id = _start_run(tmp_path, path)
    watcher = subprocess.Popen([sys.executable, "-m", "jobgraph", "show", run_id, "--watch"], cwd=tmp_path,
                               env=_env(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()
        assert f"run {run_id} RUNNING: 1 pending, 1 running" in first, first
        release.touch()
        rest = watcher.stdout.read()
        assert watcher.wait(timeout=60) == 0 and runner.wait(timeout=60) == 0
    finally:
        for process in (watcher, runner):
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = rest.splitlines()
    assert any(f"run {run_id} SUCCEEDED: 2 succeeded" in line for line in lines), rest
    assert f"run {run_id} of p: SUCCEEDED" in rest and "\x1b" not in rest


def test_watch_as_json_waits_and_exits_as_the_run_ended(tmp_path: Path, cli: Cli,
                                                        write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [sh("bad", "exit 4")]})
    cli("run", str(path), check=1)
    with Store(store_url(tmp_path)) as records:
        run_id = records.runs(1)[0].run_id
    shown = cli("show", run_id, "--watch", "--format", "json", check=1)
    document = json.loads(shown.stdout)
    assert document["run"]["state"] == "FAILED" and [a["exit_code"] for a in document["attempts"]] == [4]
    release = tmp_path / "release"
    slow = write_pipeline({"jobs": [sh("slow", _waiting(release, "echo done"))]}, name="slow.yaml")
    runner, cancelled = _start_run(tmp_path, slow)
    try:
        cli("cancel", cancelled, check=0)
        assert runner.wait(timeout=60) == 130
    finally:
        release.touch()
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert json.loads(cli("show", cancelled, "-w", "-f", "json", check=130).stdout)["run"]["state"] == "CANCELLED"
    assert "no run" in cli("show", "ffffffff", "--watch", check=2).stderr


def test_watching_a_run_whose_jobgraph_was_killed_stops_with_a_note(tmp_path: Path, cli: Cli,
                                                                    write_pipeline: WritePipeline) -> None:
    release = tmp_path / "release"
    path = write_pipeline({"jobs": [sh("slow", _waiting(release, "echo done"))]})
    runner, run_id = _start_run(tmp_path, path)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=60)
    try:
        watched = cli("show", run_id, "--watch", check=1, timeout=60)
        assert "is gone" in watched.stderr and "stopped watching" in watched.stderr
        assert "Traceback" not in watched.stderr
    finally:
        release.touch()  # the orphaned job ends by itself
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).state == "RUNNING"  # watching changes nothing
        owner = records.run(run_id).owner
    assert owner is not None and not process_alive(int(owner.split(":")[1]))


class EndsAsItsOwnerExits:
    """A store whose run is RUNNING at the first read and SUCCEEDED at every later one, owned by a process that is
    gone: what `show --watch` meets when a run ends and its jobgraph exits between two of its reads."""

    def __init__(self, owner: str) -> None:
        self.reads = 0
        self.owner = owner

    def run(self, run_id: str) -> RunRecord:
        self.reads += 1
        state = RunState.RUNNING if self.reads == 1 else RunState.SUCCEEDED
        return RunRecord(run_id, "p", state, 1, datetime.now(UTC), None, "{}", owner=self.owner)

    def tasks(self, _run_id: str) -> list[TaskRecord]:
        return []

    def attempts(self, _run_id: str) -> list[object]:
        return []


def test_a_run_that_ends_as_its_jobgraph_exits_is_shown_ended_not_lost() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    records = EndsAsItsOwnerExits(f"{socket.gethostname()}:{gone.pid}:1")
    out = Console(file=io.StringIO())
    ended = watching.watch(records, "r1", out, live=False)  # type: ignore[arg-type]
    assert ended.state == RunState.SUCCEEDED and records.reads == 2
