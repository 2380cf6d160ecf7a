"""What a person sees while a run runs: a live table on a terminal, one plain line per event otherwise.

The view is an engine listener like the store; it never reads the store. Its cost per event and
per redraw does not grow with the number of jobs, so a run of 10,000 jobs is shown as smoothly as one of 10.
Each running job on screen shows the last line it printed, read from its log's tail at the redraw
(cli/log_tail.py), never at an event: the engine's dispatch does not wait for it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import islice
from pathlib import Path

from rich.box import HEAVY_HEAD
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from jobgraph.cli.common import silence
from jobgraph.cli.log_tail import last_line
from jobgraph.engine.events import (
    AttemptEnded,
    AttemptStarted,
    Event,
    JobsExpanded,
    RetryWaiting,
    RunEnded,
    RunStarted,
    TaskChanged,
)
from jobgraph.states import TERMINAL_TASK_STATES, AttemptStatus, RunState, TaskState

STYLES = {
    TaskState.PENDING: "dim", TaskState.QUEUED: "cyan", TaskState.RUNNING: "yellow",
    TaskState.SUCCEEDED: "green", TaskState.FAILED: "bold red", TaskState.SKIPPED: "magenta",
    TaskState.CANCELLED: "red", RunState.SUCCEEDED: "bold green", RunState.FAILED: "bold red",
    RunState.CANCELLED: "bold red", RunState.RUNNING: "yellow",
}


def styled(state: str) -> Text:
    """A state name in its colour."""
    return Text(str(state), style=STYLES.get(state, ""))  # type: ignore[call-overload]


def write_line(console: Console, text: str) -> None:
    """One timestamped plain line, straight to the stream (rich's rendering per line is slow at scale)."""
    console.file.write(f"{datetime.now():%H:%M:%S} {text}\n")
    console.file.flush()


def duration(seconds: float | None) -> str:
    """Seconds as a short human duration."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


@dataclass
class _Row:
    state: TaskState = TaskState.PENDING
    attempt: int = 0
    started: float | None = None
    ended: float | None = None
    note: str = ""
    pool: str = ""
    retry_at: float | None = None
    next_attempt: int = 0
    log_path: Path | None = None


_ORDER = (TaskState.RUNNING, TaskState.FAILED, TaskState.QUEUED, TaskState.CANCELLED, TaskState.SKIPPED,
          TaskState.SUCCEEDED, TaskState.PENDING)
"""The live table's order: what runs first, then what went wrong, then what waits, then the rest."""

REFRESHES_PER_SECOND = 8
"""The live table is redrawn at this rate by rich's own thread, however many events arrive."""


@dataclass
class RunView:
    """Listener that shows each job's state, attempt and time as the run goes.

    Its cost does not grow with the run: an event moves one job between per-state lists and updates
    the counts (no work over all jobs), and a redraw, at most REFRESHES_PER_SECOND times a second
    whatever the event rate, reads only the rows that fit on the screen. A lock keeps the engine's
    events and the redraw thread apart.
    """

    console: Console
    rows: dict[str, _Row] = field(default_factory=dict)
    run_id: str = ""
    pipeline: str = ""
    state: RunState = RunState.RUNNING
    prefix: str = ""
    _live: Live | None = None
    _counts: Counter[TaskState] = field(default_factory=Counter)
    _by_state: dict[TaskState, dict[str, _Row]] = field(default_factory=lambda: {s: {} for s in _ORDER})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> RunView:
        if self.console.is_terminal:
            self._live = Live(self, console=self.console, refresh_per_second=REFRESHES_PER_SECOND, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_live()

    def _stop_live(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            with contextlib.suppress(OSError):
                live.__exit__(None, None, None)

    def reader_gone(self) -> None:
        """The output's reader went away (`| head`, a pager that quit): stop showing, never stop the run."""
        silence(self.console.file)
        self._stop_live()

    def hang_up(self) -> None:
        """The terminal closed (SIGHUP): like `nohup`, the run goes on; what wrote to the terminal stops."""
        terminal_gone(self.console)
        self._stop_live()

    def __call__(self, event: Event) -> None:
        """Update the table, or print a line when the output is not a terminal."""
        with self._lock:
            self._update(event)
        if isinstance(event, RunStarted):
            again = f" (attempt {event.run_attempt} of this run)" if event.run_attempt > 1 else ""
            self._line(f"run {event.run_id} of {event.pipeline} started{again}: {len(event.tasks)} jobs")
        elif isinstance(event, JobsExpanded):
            self._line(f"{event.job} fans out: {len(event.copies)} {'copy' if len(event.copies) == 1 else 'copies'}")
        elif isinstance(event, RetryWaiting):
            self._line(f"{event.task} waiting {duration(event.delay)} before attempt {event.next_attempt}")
        elif isinstance(event, TaskChanged):
            attempt = f" attempt {event.attempt}" if event.attempt else ""
            reason = f": {event.reason}" if event.reason else ""
            self._line(f"{event.task} {event.state}{attempt}{reason}")
        elif isinstance(event, AttemptEnded) and event.status != AttemptStatus.DONE:
            first = (event.error or "").splitlines()[0] if event.error else ""
            self._line(f"{event.task} attempt {event.attempt} {event.status}: {first}")
        elif isinstance(event, RunEnded):
            self._line(f"run {event.run_id} {event.state}")

    def _update(self, event: Event) -> None:
        """The rows an event changes: all of them once, at the start; one job's for any other event."""
        if isinstance(event, RunStarted):
            self.run_id, self.pipeline = event.run_id, event.pipeline
            for task in event.tasks:
                self._move(task.name, _Row(pool=task.pool), TaskState.PENDING)
            for name in event.resumed:
                self._move(name, self.rows[name], TaskState.SUCCEEDED)
                self.rows[name].note = "kept from the previous attempt"
        elif isinstance(event, JobsExpanded):
            for task in event.copies:
                self._move(task.name, _Row(pool=task.pool), TaskState.PENDING)
        elif isinstance(event, RetryWaiting):
            row = self._row(event.task)
            row.retry_at, row.next_attempt = time.monotonic() + event.delay, event.next_attempt
        elif isinstance(event, AttemptStarted):
            self._row(event.task).log_path = event.log_path
        elif isinstance(event, TaskChanged):
            row = self._row(event.task)
            self._move(event.task, row, event.state)
            row.retry_at = None
            row.attempt = event.attempt or row.attempt
            if event.state == TaskState.RUNNING and row.started is None:
                row.started = time.monotonic()
            if event.state in TERMINAL_TASK_STATES:
                row.ended, row.log_path = time.monotonic(), None  # only a running job's last line is shown
                row.note = event.reason or (f"returned {event.return_value!r}" if event.return_value else "")
        elif isinstance(event, RunEnded):
            self.state = event.state

    def _row(self, name: str) -> _Row:
        row = self.rows.get(name)
        if row is None:  # a job the run did not announce: shown all the same
            row = _Row()
            self._move(name, row, TaskState.PENDING)
        return row

    def _move(self, name: str, row: _Row, state: TaskState) -> None:
        """Put a job in its state's list (at the end) and count it there: O(1)."""
        old = self.rows.get(name)
        if old is not None:
            self._counts[old.state] -= 1
            self._by_state.setdefault(old.state, {}).pop(name, None)
        self.rows[name] = row
        row.state = state
        self._counts[state] += 1
        self._by_state.setdefault(state, {})[name] = row

    def _line(self, text: str) -> None:
        """Plain output: written straight to the stream, since rich's rendering per line is slow at scale."""
        if self._live is None:
            try:
                write_line(self.console, self.prefix + text)
            except OSError:
                self.reader_gone()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """The live table: running jobs first, then the rest, cut to the screen with a count of what is hidden.

        The title is a line of its own that never wraps, so a long run id cannot push into the table;
        a job between attempts shows as waiting, with the time left before its next attempt; a running
        job on screen, the last line of its log (read now, outside the lock: bounded, see log_tail).
        """
        room = max(5, console.height - 8)
        with self._lock:
            summary = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self._counts.items()) if n)
            shown = [(name, replace(row)) for name, row in islice(self._in_order(), room)]
            hidden = len(self.rows) - len(shown)
        title = Text(f"{self.pipeline}  run {self.run_id}  ({summary})", no_wrap=True, overflow="ellipsis")
        clock = time.monotonic()
        cells = []
        for name, row in shown:
            elapsed = None if row.started is None else (row.ended or clock) - row.started
            state, note = styled(row.state), row.note
            if row.retry_at is not None and row.state == TaskState.RUNNING:
                state = Text("WAITING", style="cyan")
                note = f"attempt {row.next_attempt} in {duration(max(0.0, row.retry_at - clock))}"
            elif row.state == TaskState.RUNNING and row.log_path is not None:
                note = last_line(row.log_path)
            cells.append([Text(name), Text(row.pool), state, Text(str(row.attempt or "")), Text(duration(elapsed)),
                          Text(note[:120])])
        if hidden > 0:
            cells.append([Text(f"... {hidden} more"), *(Text() for _ in range(5))])
        yield title
        yield from grid(COLUMNS, cells, options.max_width)

    def _in_order(self) -> Iterator[tuple[str, _Row]]:
        """Every job, state by state in the table's order; read lazily, so a redraw stops at a screenful."""
        for state in (*_ORDER, *(s for s in self._by_state if s not in _ORDER)):
            yield from self._by_state.get(state, {}).items()


COLUMNS = ("job", "pool", "state", "attempt", "time", "note")


def grid(header: Sequence[str], rows: list[list[Text]], width: int) -> list[Text]:
    """A table drawn as rich draws `Table()` (heavy head, one line per row), fitted to `width` by cutting
    cells with an ellipsis: the last column's first, then the widest.

    It costs a few lines of text per row; rich's own Table measures and wraps every cell on every
    redraw, about seven times as much, which a run's live view pays several times a second.
    """
    widths = [max([cell_len(title), *(row[i].cell_len for row in rows)]) for i, title in enumerate(header)]
    room = width - 3 * len(widths) - 1  # a border and a space each side of every cell
    widths[-1] = max(min(widths[-1], cell_len(header[-1])), widths[-1] - max(0, sum(widths) - room))
    while sum(widths) > room and max(widths) > 1:  # then the widest column, a character at a time
        widths[widths.index(max(widths))] -= 1

    def line(cells: Sequence[Text], left: str, middle: str, right: str) -> Text:
        text = Text(left, no_wrap=True, overflow="crop")
        for i, cell in enumerate(cells):
            cell = cell.copy()
            cell.truncate(widths[i], overflow="ellipsis", pad=True)
            text.append(" ")
            text.append_text(cell)
            text.append(f" {middle if i < len(cells) - 1 else right}")
        return text

    padded = [w + 2 for w in widths]
    lines = [Text(HEAVY_HEAD.get_top(padded), no_wrap=True, overflow="crop"),
             line([Text(title, style="bold") for title in header], HEAVY_HEAD.head_left, HEAVY_HEAD.head_vertical,
                  HEAVY_HEAD.head_right),
             Text(HEAVY_HEAD.get_row(padded, "head"), no_wrap=True, overflow="crop")]
    lines += [line(row, HEAVY_HEAD.mid_left, HEAVY_HEAD.mid_vertical, HEAVY_HEAD.mid_right) for row in rows]
    lines.append(Text(HEAVY_HEAD.get_bottom(padded), no_wrap=True, overflow="crop"))
    return lines


def terminal_gone(console: Console) -> None:
    """After SIGHUP: output that went to the closed terminal goes nowhere; pipes and files still get it."""
    silence(*(stream for stream in (console.file, sys.stderr) if _is_tty(stream)))


def _is_tty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False
