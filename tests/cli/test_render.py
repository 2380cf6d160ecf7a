"""The live view says what is true (waiting jobs wait, titles stay above the table) and keeps up with any run."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import pytest
from rich.console import Console

from jobgraph.cli import render
from jobgraph.cli.render import REFRESHES_PER_SECOND, RunView
from jobgraph.engine import AttemptEnded, AttemptStarted, RetryWaiting, RunStarted, TaskChanged, TaskInfo
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from tests.conftest import WritePipeline, store_url

AT = datetime(2030, 1, 1, tzinfo=UTC)
RUN = "0b4e4a0e-0000-4000-8000-000000000000"


def screen(view: RunView, width: int) -> list[str]:
    """What the live view draws on a terminal this wide."""
    output = io.StringIO()
    Console(file=output, width=width, height=30, force_terminal=True, color_system=None).print(view)
    return output.getvalue().splitlines()


def started(view: RunView) -> None:
    view(RunStarted(RUN, "a_pipeline_with_a_rather_long_name", AT, AT,
                    (TaskInfo("flaky", "default", "sh", ()),), "{}"))


def test_a_job_between_attempts_shows_as_waiting_not_running() -> None:
    view = RunView(Console(file=io.StringIO()))
    started(view)
    view(TaskChanged(RUN, "flaky", TaskState.RUNNING, AT, attempt=1))
    view(AttemptEnded(RUN, "flaky", 1, AttemptStatus.FAILED, AT, AT, 1, "exit code 1", Path("log")))
    view(RetryWaiting(RUN, "flaky", 2, AT, delay=30.0))
    [row] = [line for line in screen(view, 100) if "flaky" in line]
    assert "WAITING" in row and "RUNNING" not in row
    assert "attempt 2 in 29" in row or "attempt 2 in 30" in row
    view(TaskChanged(RUN, "flaky", TaskState.RUNNING, AT, attempt=2))
    [row] = [line for line in screen(view, 100) if "flaky" in line]
    assert "RUNNING" in row and "WAITING" not in row


def test_a_running_job_shows_the_last_line_of_its_log_until_it_ends(tmp_path: Path) -> None:
    view = RunView(Console(file=io.StringIO()))
    started(view)
    log = tmp_path / "flaky" / "attempt-1.log"
    log.parent.mkdir()
    view(TaskChanged(RUN, "flaky", TaskState.RUNNING, AT, attempt=1))
    view(AttemptStarted(RUN, "flaky", 1, AT, log, "local"))
    [row] = [line for line in screen(view, 120) if "flaky" in line]
    assert "RUNNING" in row and row.rstrip(" ┃").endswith("│")  # nothing printed yet: an empty note
    log.write_text("connecting\nloaded 1200 rows \x1b[32mok\x1b[0m\n")
    [row] = [line for line in screen(view, 120) if "flaky" in line]
    assert "loaded 1200 rows ok" in row and "connecting" not in row
    view(AttemptEnded(RUN, "flaky", 1, AttemptStatus.FAILED, AT, AT, 1, "exit code 1", log))
    view(RetryWaiting(RUN, "flaky", 2, AT, delay=30.0))
    [row] = [line for line in screen(view, 120) if "flaky" in line]
    assert "WAITING" in row and "loaded" not in row  # between attempts: when the next one starts, not old output
    view(TaskChanged(RUN, "flaky", TaskState.SUCCEEDED, AT, attempt=1))
    [row] = [line for line in screen(view, 120) if "flaky" in line]
    assert "SUCCEEDED" in row and "loaded" not in row


def test_an_event_never_reads_a_log_only_a_redraw_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine hands the view its events between dispatches: reading a log there would slow them."""
    reads: list[Path] = []

    def reading(path: Path) -> str:
        reads.append(path)
        return "last"

    monkeypatch.setattr(render, "last_line", reading)
    view = big_view(1_000)
    for i in range(30):
        view(AttemptStarted(RUN, f"running_{i}", 1, AT, tmp_path / f"{i}.log"))
        view(TaskChanged(RUN, f"other_{i}", TaskState.RUNNING, AT, attempt=1))
    assert reads == []
    screen(view, 120)
    assert 0 < len(reads) <= 30  # the running jobs on the screen, not every job


def test_the_view_draws_before_the_run_has_started() -> None:
    assert screen(RunView(Console(file=io.StringIO())), 60)[2] == "┃ job ┃ pool ┃ state ┃ attempt ┃ time ┃ note ┃"


def test_plain_output_says_how_long_a_job_waits_before_its_next_attempt() -> None:
    output = io.StringIO()
    view = RunView(Console(file=output, width=100))
    started(view)
    view(RetryWaiting(RUN, "flaky", 3, AT, delay=90.0))
    assert output.getvalue().splitlines()[-1].endswith("flaky waiting 1m30s before attempt 3")


def test_the_title_never_wraps_into_the_table_on_a_narrow_terminal() -> None:
    view = RunView(Console(file=io.StringIO()))
    started(view)
    lines = screen(view, 40)
    assert lines[0].startswith("a_pipeline_with_a_rather_long_name") and len(lines[0]) <= 40
    assert lines[1].startswith("┏")


def traced_steps(action: Callable[[], object]) -> int:
    """How many Python calls and lines `action` runs: a count of work that does not depend on the machine's load."""
    steps = 0

    def trace(_frame: FrameType, _event: str, _arg: object) -> Callable[..., object]:
        nonlocal steps
        steps += 1
        return trace

    sys.settrace(trace)
    try:
        action()
    finally:
        sys.settrace(None)
    return steps


def big_view(jobs: int) -> RunView:
    """A view of `jobs` jobs: 30 running (more than a screen holds), the rest pending or succeeded."""
    view = RunView(Console(file=io.StringIO(), width=120, height=30))
    names = [f"running_{i}" for i in range(30)] + [f"other_{i}" for i in range(jobs - 30)]
    view(RunStarted(RUN, "big", AT, AT, tuple(TaskInfo(name, "default", "sh", ()) for name in names), "{}"))
    for name in names[:30]:
        view(TaskChanged(RUN, name, TaskState.RUNNING, AT, attempt=1))
    for name in names[30::2]:
        view(TaskChanged(RUN, name, TaskState.SUCCEEDED, AT, attempt=1))
    return view


def test_an_event_and_a_redraw_cost_the_same_for_10000_jobs_as_for_1000() -> None:
    costs = {}
    for jobs in (1_000, 10_000):
        view = big_view(jobs)
        event = traced_steps(lambda view=view: view(TaskChanged(RUN, "other_1", TaskState.RUNNING, AT, attempt=1)))
        redraw = traced_steps(lambda view=view: screen(view, 120))
        costs[jobs] = (event, redraw)
        assert f"({jobs - 30 - (jobs - 30) // 2 - 1} pending, 31 running, {(jobs - 30) // 2} succeeded)" in \
            screen(view, 200)[0]
    assert costs[10_000][0] == costs[1_000][0]
    assert costs[10_000][1] <= costs[1_000][1] * 1.05, costs  # only the "... N more" line's digits differ


def test_a_2000_job_run_completes_with_the_live_view_redrawn_at_a_bounded_rate(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    jobs = [{"name": f"j_{i}", "image": "noop", "after": [f"j_{i - 100}"] if i >= 100 else []} for i in range(2_000)]
    path = write_pipeline({"name": "big", "images": {"noop": ["true"]}, "jobs": jobs})
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "TERM": "xterm", "COLUMNS": "160",
           "LINES": "40"}
    controller, terminal = pty.openpty()
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = bytearray()
    while True:  # the terminal is read all along, as a terminal window would, so the view never blocks
        try:
            chunk = os.read(controller, 1 << 16)
        except OSError:  # EIO: jobgraph exited and closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert process.wait(timeout=600) == 0, shown[-2000:].decode(errors="replace")
    took = time.monotonic() - began
    with Store(store_url(tmp_path)) as records:
        [run] = records.runs()
        assert run.state == RunState.SUCCEEDED
        tasks = records.tasks(run.run_id)
    assert len(tasks) == 2_000 and all(t.state == TaskState.SUCCEEDED for t in tasks)
    text = shown.decode(errors="replace")
    frames = len(re.findall(rf"big  run {run.run_id}  \(", text))
    # 8,000 events (queued, running, attempt ended, succeeded per job), a redraw only every 1/8 s at most
    assert 1 <= frames <= REFRESHES_PER_SECOND * took + 2, (frames, took)
    assert "2000 succeeded" in text  # the closing summary, once the view is gone


def read_terminal_until(controller: int, shown: bytearray, wanted: bytes, seconds: float = 60) -> None:
    """Read what a program draws on its terminal until `wanted` appears (or fail after `seconds`)."""
    deadline = time.monotonic() + seconds
    while wanted not in shown:
        assert time.monotonic() < deadline, shown[-3000:].decode(errors="replace")
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                shown += os.read(controller, 1 << 16)
            except OSError:  # EIO: the program exited and closed its end
                break


def test_jobgraph_runs_live_view_shows_what_a_running_job_just_printed(tmp_path: Path,
                                                                       write_pipeline: WritePipeline) -> None:
    release = tmp_path / "release"
    script = f'echo "starting up"; echo "halfway: 512 of 1024 files"; while [ ! -e "{release}" ]; do sleep 0.02; done'
    path = write_pipeline({"name": "live", "images": {"sh": ["sh", "-c"]}, "jobs": [
        {"name": "copy", "image": "sh", "args": [script]}]})
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "TERM": "xterm", "COLUMNS": "160",
           "LINES": "40"}
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = bytearray()
    try:
        read_terminal_until(controller, shown, b"halfway: 512 of 1024 files")
        with Store(store_url(tmp_path)) as records:
            [run] = records.runs()
            assert run.state == RunState.RUNNING  # shown while the job runs, not once it has ended
        release.touch()
        read_terminal_until(controller, shown, b"SUCCEEDED", seconds=60)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    frame = next(line for line in shown.decode(errors="replace").splitlines() if "halfway" in line)
    assert "copy" in frame and "RUNNING" in frame and "starting up" not in frame
