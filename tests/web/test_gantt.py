"""The Gantt of attempts: one bar per attempt, failures crossed, waits between retries drawn, names escaped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobgraph.states import AttemptStatus
from jobgraph.store.records import AttemptRecord
from jobgraph.web.gantt import gantt_svg

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def attempt(job: str, n: int, start: float, end: float | None, status: AttemptStatus) -> AttemptRecord:
    return AttemptRecord(task=job, attempt=n, status=status, exit_code=None if end is None else 1, error=None,
                         log_path=Path("/dev/null"), started_at=T0 + timedelta(seconds=start),
                         finished_at=None if end is None else T0 + timedelta(seconds=end), duration_secs=None)


def test_retries_show_as_crossed_bars_with_the_waits_between_them() -> None:
    svg = gantt_svg(["flaky", "<b>x</b>"], [
        attempt("flaky", 1, 0, 1, AttemptStatus.FAILED), attempt("flaky", 2, 3, 4, AttemptStatus.FAILED),
        attempt("flaky", 3, 6, None, AttemptStatus.RUNNING), attempt("<b>x</b>", 1, 0, 2, AttemptStatus.DONE),
        attempt("hidden", 1, 0, 100, AttemptStatus.DONE),
    ], now=T0 + timedelta(seconds=8))
    assert svg.count('class="attempt a-FAILED"') == 2 and svg.count('class="cross"') == 2
    assert svg.count('class="attempt a-RUNNING"') == 1 and svg.count('class="attempt a-DONE"') == 1
    assert svg.count('class="wait"') == 2 and "waited 2.0 s before attempt 2" in svg
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
    assert "hidden" not in svg and ">+8.0 s<" in svg  # only the rows asked for, on their own time axis
    assert f">{T0:%H:%M:%S} UTC<" in svg  # the axis starts at a clock time, in UTC as the whole page


def test_long_runs_count_whole_minutes_and_hours_plainly() -> None:
    svg = gantt_svg(["long"], [attempt("long", 1, 0, 7200, AttemptStatus.DONE)], now=T0 + timedelta(hours=3))
    assert ">+15 min<" in svg and ">+1 h<" in svg and ">+2 h<" in svg and ">+1 h 15 min<" in svg
    assert " 0 min<" not in svg and " 0 s<" not in svg and "16 min 40 s" not in svg  # clock steps, not 1,000 s


def test_no_attempt_yet_says_so() -> None:
    assert "no attempt has started yet" in gantt_svg(["a"], [], now=T0)
