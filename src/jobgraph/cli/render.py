"""What a person sees while a run runs: a live table on a terminal, one plain line per event otherwise.

The view is an engine listener like the store; it never reads the store.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jobgraph.cli.common import silence
from jobgraph.engine.events import AttemptEnded, Event, RetryWaiting, RunEnded, RunStarted, TaskChanged
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


@dataclass
class RunView:
    """Listener that shows each job's state, attempt and time as the run goes."""

    console: Console
    rows: dict[str, _Row] = field(default_factory=dict)
    run_id: str = ""
    pipeline: str = ""
    state: RunState = RunState.RUNNING
    prefix: str = ""
    _live: Live | None = None

    def __enter__(self) -> RunView:
        if self.console.is_terminal:
            self._live = Live(self, console=self.console, refresh_per_second=8, transient=True)
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
        if isinstance(event, RunStarted):
            self.run_id, self.pipeline = event.run_id, event.pipeline
            for task in event.tasks:
                self.rows[task.name] = _Row(pool=task.pool)
            for name in event.resumed:
                self.rows[name].state = TaskState.SUCCEEDED
                self.rows[name].note = "kept from the previous attempt"
            again = f" (attempt {event.run_attempt} of this run)" if event.run_attempt > 1 else ""
            self._line(f"run {event.run_id} of {event.pipeline} started{again}: {len(event.tasks)} jobs")
        elif isinstance(event, RetryWaiting):
            row = self.rows.setdefault(event.task, _Row())
            row.retry_at, row.next_attempt = time.monotonic() + event.delay, event.next_attempt
            self._line(f"{event.task} waiting {duration(event.delay)} before attempt {event.next_attempt}")
        elif isinstance(event, TaskChanged):
            row = self.rows.setdefault(event.task, _Row())
            row.state, row.retry_at = event.state, None
            row.attempt = event.attempt or row.attempt
            if event.state == TaskState.RUNNING and row.started is None:
                row.started = time.monotonic()
            if event.state in TERMINAL_TASK_STATES:
                row.ended = time.monotonic()
                row.note = event.reason or (f"returned {event.return_value!r}" if event.return_value else "")
            attempt = f" attempt {event.attempt}" if event.attempt else ""
            reason = f": {event.reason}" if event.reason else ""
            self._line(f"{event.task} {event.state}{attempt}{reason}")
        elif isinstance(event, AttemptEnded) and event.status != AttemptStatus.DONE:
            first = (event.error or "").splitlines()[0] if event.error else ""
            self._line(f"{event.task} attempt {event.attempt} {event.status}: {first}")
        elif isinstance(event, RunEnded):
            self.state = event.state
            self._line(f"run {event.run_id} {event.state}")

    def _line(self, text: str) -> None:
        """Plain output: written straight to the stream, since rich's rendering per line is slow at scale."""
        if self._live is None:
            try:
                write_line(self.console, self.prefix + text)
            except OSError:
                self.reader_gone()

    def __rich__(self) -> Group:
        """The live table: running jobs first, then the rest, cut to the screen with a count of what is hidden.

        The title is a line of its own that never wraps, so a long run id cannot push into the table;
        a job between attempts shows as waiting, with the time left before its next attempt.
        """
        counts = Counter(row.state for row in self.rows.values())
        summary = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
        title = Text(f"{self.pipeline}  run {self.run_id}  ({summary})", no_wrap=True, overflow="ellipsis")
        table = Table()
        for column in ("job", "pool", "state", "attempt", "time", "note"):
            table.add_column(column, overflow="fold" if column == "note" else "ellipsis", no_wrap=column != "note")
        room = max(5, self.console.height - 8)
        rows = sorted(self.rows.items(), key=lambda item: _ORDER.get(item[1].state, 9))
        clock = time.monotonic()
        for name, row in rows[:room]:
            elapsed = None if row.started is None else (row.ended or clock) - row.started
            state, note = styled(row.state), row.note
            if row.retry_at is not None and row.state == TaskState.RUNNING:
                state = Text("WAITING", style="cyan")
                note = f"attempt {row.next_attempt} in {duration(max(0.0, row.retry_at - clock))}"
            table.add_row(name, row.pool, state, str(row.attempt or ""), duration(elapsed), Text(note[:120]))
        if len(rows) > room:
            table.add_row(f"... {len(rows) - room} more", "", "", "", "", "")
        return Group(title, table)


_ORDER = {TaskState.RUNNING: 0, TaskState.FAILED: 1, TaskState.QUEUED: 2, TaskState.CANCELLED: 3,
          TaskState.SKIPPED: 4, TaskState.SUCCEEDED: 5, TaskState.PENDING: 6}


def terminal_gone(console: Console) -> None:
    """After SIGHUP: output that went to the closed terminal goes nowhere; pipes and files still get it."""
    silence(*(stream for stream in (console.file, sys.stderr) if _is_tty(stream)))


def _is_tty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False
