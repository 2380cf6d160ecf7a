"""The live view says what is true: waiting jobs wait, titles stay above the table."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from jobgraph.cli.render import RunView
from jobgraph.engine import AttemptEnded, RetryWaiting, RunStarted, TaskChanged, TaskInfo
from jobgraph.states import AttemptStatus, TaskState

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
