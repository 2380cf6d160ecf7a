"""Commands that read the store: history, show, logs, and the seed's tables (stats). Times are shown in UTC."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from jobgraph.cli.commands import OutputFormat
from jobgraph.cli.common import console, reported, store_url, write_plain
from jobgraph.cli.render import duration, styled
from jobgraph.errors import StoreError, did_you_mean
from jobgraph.runners.output import UnsafeFile, copy_out, open_regular
from jobgraph.selection import loaded, selected_jobs, summary
from jobgraph.store import Store, TaskRecord
from jobgraph.store.records import VIEW_ORDER

if TYPE_CHECKING:
    from jobgraph.app.queries import Json


def tasks_table(tasks: list[TaskRecord], title: str) -> Table:
    """One row per job of a run: state, attempts, timing, return value or error."""
    table = Table(title=title, title_justify="left")
    for column in ("job", "state", "attempts", "started (UTC)", "duration", "return value / error"):
        table.add_column(column, overflow="fold")
    for task in tasks:
        started = _utc_text(task.started_at)
        note = task.error_message or task.return_value or ""
        table.add_row(task.task, styled(task.state), str(task.attempts), started,
                      duration(task.duration_secs), escape(note.splitlines()[0] if note else ""))
    return table


def job_order(task: TaskRecord) -> tuple[str, int]:
    """Jobs by name, a fanned-out job's copies right after it in item order (`load[2]` before `load[10]`)."""
    if task.item is not None and task.task.endswith("]"):
        base, _, index = task.task[:-1].rpartition("[")
        if index.isdigit():
            return base, int(index) + 1
    return task.task, 0


@reported
def history(limit: int = 20, pipeline: str | None = None, store: str | None = None,
            output: OutputFormat = OutputFormat.table) -> None:
    """The latest runs as a table, newest first, with how many of their jobs ended in each state.

    As JSON: `{"runs": [...]}`, each run as GET /api/v1/runs lists it (queries.run_page), so a script
    reads the same fields from the command line and the API.
    """
    with Store(store_url(store)) as records:
        if output == OutputFormat.json:
            write_plain(json.dumps({"runs": _runs(records, limit, pipeline)}, indent=2))
            return
        table = Table(title="runs", title_justify="left")
        for column in ("run id", "pipeline", "state", "attempt", "started (UTC)", "duration", "jobs"):
            table.add_column(column)
        for run in records.runs(limit, pipeline):
            took = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
            chosen = loaded(run.selection)
            partial = " (partial)" if selected_jobs(chosen) is not None else ""
            cleared = " (cleared)" if chosen and chosen.get("retries") else ""
            table.add_row(run.run_id, run.pipeline, styled(run.state), str(run.run_attempt) + cleared,
                          _utc_text(run.started_at), duration(took),
                          ", ".join(f"{n} {s.lower()}" for s, n in sorted(run.task_counts.items())) + partial)
        console.print(table)


def _runs(records: Store, limit: int, pipeline: str | None) -> list[Json]:
    """The newest `limit` runs as the API lists them, read a page of at most MAX_PAGE at a time.

    queries (and SQLAlchemy) is imported here, not above: `jobgraph run` imports this module for its
    tables and records through sqlite3 alone.
    """
    from jobgraph.app import queries

    if limit < 1:
        raise StoreError(f"--limit must be 1 or more, not {limit}")
    found: list[Json] = []
    cursor: str | None = None
    while len(found) < limit:
        page, cursor = queries.run_page(records, pipeline=pipeline, limit=min(limit - len(found), queries.MAX_PAGE),
                                        cursor=cursor)
        found.extend(page)
        if cursor is None:
            break
    return found


@reported
def show(run_id: str, store: str | None = None, output: OutputFormat = OutputFormat.table) -> None:
    """Two tables, the run's jobs then every attempt of them, and a third of its notifications if it sent any.

    As JSON: `{"run", "jobs", "attempts", "notifications"}` as GET /api/v1/runs/RUN_ID gives them
    (queries.run_detail).
    """
    with Store(store_url(store)) as records:
        run = records.run(run_id)
        if output == OutputFormat.json:
            from jobgraph.app import queries  # not above: see _runs

            write_plain(json.dumps(queries.run_detail(records, run.run_id), indent=2))
            return
        if run.params:
            console.print("params: " + escape(params_line(run.params)), overflow="fold")
        console.print(tasks_table(sorted(records.tasks(run.run_id), key=job_order),
                                  title=f"run {run.run_id} of {run.pipeline}: {run.state}"
                                  + (f" (after {run.run_attempt - 1} retry)" if run.run_attempt == 2 else
                                     f" (after {run.run_attempt - 1} retries)" if run.run_attempt > 2 else "")))
        chosen = summary(loaded(run.selection))
        if chosen:
            console.print(escape(chosen))
        table = Table(title="attempts", title_justify="left")
        for column in ("job", "attempt", "run attempt", "status", "exit", "started (UTC)", "duration", "error"):
            table.add_column(column, overflow="fold")
        for attempt in records.attempts(run.run_id):
            error = (attempt.error or "").strip()
            table.add_row(attempt.task, str(attempt.attempt), str(attempt.run_attempt), str(attempt.status),
                          "" if attempt.exit_code is None else str(attempt.exit_code),
                          _utc_text(attempt.started_at), duration(attempt.duration_secs), escape(error[-400:]))
        console.print(table)
        sent = records.notifications(run.run_id)
        if sent:
            table = Table(title="notifications", title_justify="left")
            for column in ("event", "job", "to", "state", "tries", "at (UTC)", "error"):
                table.add_column(column, overflow="fold")
            for each in sent:
                table.add_row(each.event, each.task or "", escape(each.target), each.state, str(each.tries),
                              _utc_text(each.finished_at or each.created_at), escape((each.error or "")[-400:]))
            console.print(table)


@reported
def logs(run_id: str, job: str, attempt: int | None = None, store: str | None = None, follow: bool = False) -> None:
    """Copy an attempt's log file to stdout, refusing one that is not a regular file (a job may have replaced it).

    With `follow`, go on printing what the attempt appends until it ends (cli/follow.py); without an
    `attempt`, then each later attempt of the job too, as it is retried.
    """
    with Store(store_url(store)) as records:
        run = records.run(run_id)
        attempts = [a for a in records.attempts(run.run_id) if a.task.casefold() == job.strip().casefold()]
        if not attempts:
            raise StoreError(f"run {run.run_id} has no attempt of a job named {job!r}"
                             f"{did_you_mean(job, [t.task for t in records.tasks(run.run_id)])}")
        chosen = attempts[-1] if attempt is None else next((a for a in attempts if a.attempt == attempt), None)
        if chosen is None:
            numbers = ", ".join(str(a.attempt) for a in attempts)
            raise StoreError(f"job {attempts[0].task} has no attempt {attempt} (it has {numbers})")
        if follow:
            from jobgraph.cli.follow import follow as follow_log

            follow_log(records, run.run_id, chosen, next_attempts=attempt is None)
            return
    try:
        fd = open_regular(chosen.log_path)
    except FileNotFoundError:
        if chosen.status == "RUNNING" and chosen.backend_ref:
            raise StoreError(f"{chosen.task} attempt {chosen.attempt} is still running in {chosen.runner} "
                             f"({chosen.backend_ref}): its output is stored here when it ends") from None
        raise StoreError(f"the log file {chosen.log_path} is gone") from None
    except UnsafeFile:
        raise StoreError(f"the log file {chosen.log_path} is not a regular file (did a job replace it?): "
                         "it is not shown") from None
    except OSError as exc:
        raise StoreError(f"cannot read the log file {chosen.log_path}: {exc.strerror or exc}") from None
    console.print(f"# {chosen.task} attempt {chosen.attempt}: {chosen.status} ({chosen.log_path})",
                  style="dim", markup=False)
    sys.stdout.flush()
    try:
        copy_out(fd, sys.stdout.buffer)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left (`| head`): stop quietly, like cat
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        os.close(fd)


@reported
def stats(view: str, limit: int = 10, store: str | None = None) -> None:
    """The view's latest rows as a table, one line per cell, its time columns marked UTC."""
    with Store(store_url(store)) as records:
        name = view.strip().lower()
        columns, rows = records.view(name, limit)
        table = Table(title=f"select top {limit} * from {name} order by {VIEW_ORDER[name]} desc (times in UTC)",
                      title_justify="left")
        for column in columns:
            table.add_column(f"{column} (UTC)" if column.endswith(TIME_SUFFIXES) else column, overflow="fold")
        for row in rows:
            table.add_row(*(escape(_cell(value)) for value in row))
        console.print(table)


def params_line(text: str) -> str:
    """A run's recorded parameter values (a JSON object) as `name=value, ...`: printable text as it is, else JSON."""
    values = json.loads(text)
    return ", ".join(f"{name}={value if isinstance(value, str) and value.isprintable() else _quoted(value)}"
                     for name, value in values.items()) or "(none)"


def _quoted(value: object) -> str:
    """A value as JSON with every character that is not printable escaped (JSON leaves DEL, C1 controls and
    U+2028 as they are): a param may come from anyone who may trigger, and `\\x1b[2J` or `\\x9b` printed raw
    would drive the reader's terminal."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in json.dumps(value, ensure_ascii=False))


TIME_SUFFIXES = ("_time", "_date")
"""The views' time columns (the seed's names end so); `stats` marks their headers "(UTC)"."""


def _utc_text(moment: datetime | None) -> str:
    """A stored time, to the second, in UTC (a naive one is already UTC)."""
    if moment is None:
        return ""
    return (moment.astimezone(UTC) if moment.tzinfo else moment).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: object) -> str:
    """One line per cell: times to the second in UTC, errors folded onto one line and cut short."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _utc_text(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    text = " | ".join(line.strip() for line in str(value).strip().splitlines() if line.strip())
    return text if len(text) <= 160 else text[:157] + "..."
