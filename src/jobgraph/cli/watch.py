"""`jobgraph show RUN --watch`: the run's jobs redrawn from the store until the run ends, whoever runs it.

It reads the store (not the engine's events), so it watches a run of any process: `run` in another
terminal, `serve`, `web`. On a terminal it is a live table like `run`'s own, cut to the screen, each
running job with the last line it printed (cli/log_tail.py); piped, one line each time the job
counts change. It returns the ended run for `show` to print as it always does (cli/commands.py), then
exit with the run's code; a run whose jobgraph process is gone (kill -9) never ends by itself, so
watching it stops with a note (exit 1).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import typer
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from jobgraph.cli.common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    console,
    errors,
    reported,
    silence,
    store_url,
    write_plain,
)
from jobgraph.cli.log_tail import last_line
from jobgraph.cli.render import COLUMNS, duration, grid, styled
from jobgraph.owner import owner_is_gone
from jobgraph.states import RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.records import RunRecord, TaskRecord

WATCH_SECS = 1.0
"""How often the store is read again while the run goes on."""


_ORDER = (TaskState.RUNNING, TaskState.FAILED, TaskState.QUEUED, TaskState.CANCELLED, TaskState.SKIPPED,
          TaskState.SUCCEEDED, TaskState.PENDING)
"""The table's order, as `run`'s live view has it: what runs first, then what went wrong, then the rest."""


@dataclass(frozen=True)
class Frame:
    """One reading of the store: the run, its jobs, and the log of each job's latest attempt."""

    run: RunRecord
    tasks: list[TaskRecord]
    logs: dict[str, str]
    at: datetime

    def counts(self) -> Counter[str]:
        """Jobs by state."""
        return Counter(str(task.state) for task in self.tasks)

    def summary(self) -> str:
        """`2 running, 3 succeeded`."""
        return ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.counts().items()) if n)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """The title, then the jobs in the live view's order, cut to the screen with a count of what is hidden;
        the last line of a running job's log is read here, for the jobs on screen only."""
        room = max(5, (options.height or console.height) - 8)
        ordered = sorted(self.tasks, key=lambda t: _ORDER.index(t.state) if t.state in _ORDER else len(_ORDER))
        shown = ordered[:room]
        cells = []
        for task in shown:
            end = task.finished_at or (self.at if task.started_at else None)
            took = (end - task.started_at).total_seconds() if end and task.started_at else None
            if task.state == TaskState.RUNNING and task.task in self.logs:
                note = last_line(self.logs[task.task])
            else:
                note = (task.error_message or task.return_value or "").strip()
                note = note.splitlines()[0] if note else ""
            cells.append([Text(task.task), Text(task.pool), styled(task.state), Text(str(task.attempts or "")),
                          Text(duration(took)), Text(note[:120])])
        if len(ordered) > len(shown):
            cells.append([Text(f"... {len(ordered) - len(shown)} more"), *(Text() for _ in range(5))])
        yield Text(f"{self.run.pipeline}  run {self.run.run_id}  {self.run.state}  ({self.summary()})  "
                   "watching: Ctrl-C stops watching, the run goes on", no_wrap=True, overflow="ellipsis")
        yield from grid(COLUMNS, cells, options.max_width)


def read(records: Store, run_id: str) -> Frame:
    """The run as the store has it now; the log paths only of jobs that run (their latest attempt's)."""
    run = records.run(run_id)
    tasks = records.tasks(run_id)
    logs: dict[str, str] = {}
    if any(task.state == TaskState.RUNNING for task in tasks):
        logs = {attempt.task: str(attempt.log_path) for attempt in records.attempts(run_id)}  # oldest first
    return Frame(run, tasks, logs, datetime.now(UTC))


@reported
def watch_run(run_id: str, store: str | None = None, live: bool = True) -> RunRecord:
    """Watch the run (a unique prefix of its id is enough) until it ends; the ended run."""
    with Store(store_url(store)) as records:
        return watch(records, records.run(run_id).run_id, console, live)


def watch(records: Store, run_id: str, out: Console, live: bool) -> RunRecord:
    """Redraw the run until it ends (a live table when `live` and on a terminal, else a line per change);
    the ended run. Ctrl-C stops watching (exit 130); a lost run stops it with a note (exit 1)."""
    try:
        if live and out.is_terminal:
            with Live(console=out, auto_refresh=False, transient=True) as screen:
                for frame in _frames(records, run_id):
                    screen.update(frame, refresh=True)
                return frame.run
        seen = ""
        for frame in _frames(records, run_id):
            line = f"{frame.at:%H:%M:%S} run {frame.run.run_id} {frame.run.state}: {frame.summary()}"
            if live and line[9:] != seen:
                write_plain(line)
                seen = line[9:]
        return frame.run
    except KeyboardInterrupt:
        silence(out.file)
        raise typer.Exit(EXIT_CANCELLED) from None
    except BrokenPipeError:  # the reader left (`| head`): stop quietly
        silence(out.file)
        raise typer.Exit(EXIT_OK) from None


def _frames(records: Store, run_id: str) -> Iterator[Frame]:
    """A frame now, then one every WATCH_SECS while the run runs, the last one of the ended run."""
    while True:
        frame = read(records, run_id)
        yield frame
        if frame.run.state != RunState.RUNNING:
            return
        owner = frame.run.owner
        if owner and owner_is_gone(owner):
            ended = read(records, run_id)  # it may have ended, and its jobgraph exited, since the read above
            if ended.run.state != RunState.RUNNING:
                yield ended
                return
            errors.print(f"the jobgraph process running run {frame.run.run_id} ({owner}) is gone: its jobs stay "
                         "RUNNING until the next `jobgraph run`, `retry` or `serve` finds the lost run; stopped "
                         "watching", markup=False)
            raise typer.Exit(EXIT_FAILED)
        time.sleep(WATCH_SECS)
