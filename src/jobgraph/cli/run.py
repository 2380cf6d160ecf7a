"""Commands that run a pipeline: run, and retry of a run's failed, skipped and cancelled jobs.

The work is the application layer's (jobgraph.app.runs, .retry, .lost_runs); here are the live view, what is
printed and the exit codes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from jobgraph.app.lost_runs import resume_adopting
from jobgraph.app.reports import Reports
from jobgraph.app.retry import claim_retry, run_retry
from jobgraph.app.runs import RunPlan, execute
from jobgraph.cli.common import (
    EXIT_CODES,
    EXIT_OK,
    console,
    errors,
    reported,
    silence,
    store_url,
)
from jobgraph.cli.render import RunView
from jobgraph.cli.show import job_order, tasks_table
from jobgraph.config import load
from jobgraph.config.params import given_values, parse_assignments, resolve
from jobgraph.engine.run import RunResult
from jobgraph.errors import ConfigError, StoreError
from jobgraph.selection import choose, names
from jobgraph.states import RunState, TaskState
from jobgraph.store import Store

SUMMARY_ROWS = 40
"""Past this many jobs, the closing summary lists only the jobs that did not succeed."""



def terminal_reports(records: Store) -> Reports:
    """The application layer's messages on the terminal: progress on stdout, the rest on stderr, a live view
    per run and its closing table."""
    return Reports(say=lambda text: console.print(escape(text)),
                   warn=lambda text: errors.print(f"[yellow]warning:[/yellow] {escape(text)}"),
                   error=lambda text: errors.print(f"[red]error:[/red] {escape(text)}"),
                   note=lambda text: errors.print(escape(text)),
                   display=lambda: RunView(console), ended=lambda result: print_summary(records, result))


@reported
def run(file: Path, store: str | None = None, runner: str | None = None, only: Sequence[str] = (),
        start: Sequence[str] = (), until: Sequence[str] = (), params: Sequence[str] = ()) -> None:
    """Resume what lost runs left running remotely, then run the pipeline (or the part of it chosen: an unknown
    job name stops it here, before the store is opened); the exit code says how it ended. `params` (`--param
    NAME=VALUE`) are checked against the file's params before the store is opened too."""
    pipeline = load(file, runner)
    selection = choose(pipeline, str(file), names(only), names(start, "--from"), names(until, "--until"))
    given = given_values(pipeline, parse_assignments(params), str(file), from_text=True)
    resolve(pipeline, given, str(file))
    with Store(store_url(store)) as records:
        reports = terminal_reports(records)
        resume_adopting(records, reports)
        if selection is not None:
            reports.say(f"partial run: {len(selection['jobs'])} of {len(pipeline.jobs)} jobs "
                        f"({', '.join(selection['jobs'][:20])}{', ...' if len(selection['jobs']) > 20 else ''})")
        try:
            result = execute(records, RunPlan(pipeline, selection=selection, params=given), runner, reports)
        except ConfigError as exc:  # the app layer names the pipeline (a deployed one has no file): name the file
            if exc.file != f"pipeline {pipeline.name}":
                raise
            raise ConfigError(str(file), exc.problems) from None
    raise typer.Exit(EXIT_CODES[result.state])


@reported
def retry(run_id: str, store: str | None = None, runner: str | None = None, file: Path | None = None,
          jobs: Sequence[str] = (), downstream: bool = False) -> None:
    """Claim the run (so that of several retries exactly one runs it), then run what did not succeed, as the same
    run; a run whose jobgraph died is resumed instead."""
    asked = names(jobs, "--job")
    if downstream and not asked:
        raise StoreError("--downstream goes with --job: name the jobs whose dependents run again; nothing was run")
    with Store(store_url(store)) as records:
        reports = terminal_reports(records)
        resumed = resume_adopting(records, reports)
        previous = records.run(run_id)
        if previous.run_id in resumed:  # its jobgraph had died: going on with it was what this retry did
            raise typer.Exit(EXIT_CODES[resumed[previous.run_id].state])
        if previous.state == RunState.SUCCEEDED and not asked:
            console.print(f"run {previous.run_id} succeeded: nothing to retry")
            raise typer.Exit(EXIT_OK)
        claimed = claim_retry(records, previous, file, runner, asked, downstream)
        for line in claimed.announce():
            reports.say(line)
        result = run_retry(records, claimed, runner, reports)
    raise typer.Exit(EXIT_CODES[result.state])


def print_summary(records: Store, result: RunResult) -> None:
    """Print a run's closing table; a reader that went away silences it."""
    try:
        console.print(summary_table(records, result))
    except OSError:
        silence(console.file)


def summary_table(records: Store, result: RunResult) -> Table:
    """The closing table; a big run shows the jobs that did not succeed first, then the others, up to a screen."""
    tasks = sorted(records.tasks(result.run_id), key=job_order)
    title = f"run {result.run_id}: {result.state}"
    if len(tasks) > SUMMARY_ROWS:
        counts = Counter(str(t.state).lower() for t in tasks)
        title += " (" + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + ")"
        tasks = sorted(tasks, key=lambda t: t.state == TaskState.SUCCEEDED)
        title += f"; the first {SUMMARY_ROWS}: `jobgraph show {result.run_id}` lists every job"
        tasks = tasks[:SUMMARY_ROWS]
    return tasks_table(tasks, title=title)
