"""Deployed pipelines and the scheduler service: deploy, pipelines, suspend, resume, trigger, drop, serve.

The work is the application layer's (jobgraph.app.pipelines, .trigger, .service); here are the tables, the
lines printed and the exit codes.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from jobgraph.app import pipelines as deployed_pipelines
from jobgraph.app import queries
from jobgraph.app.lost_runs import resume_adopting
from jobgraph.app.reports import Reports
from jobgraph.app.runs import execute
from jobgraph.app.service import serve as serve_forever
from jobgraph.app.trigger import (
    QUEUED,
    SKIPPED,
    STARTED,
    TriggerOutcome,
    await_outcome,
    deployed_plan,
    no_service,
    outcome_of,
    request,
)
from jobgraph.cli.commands import OutputFormat
from jobgraph.cli.common import (
    EXIT_CANCELLED,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_OK,
    console,
    errors,
    reported,
    reported_as,
    silence,
    store_url,
    write_plain,
)
from jobgraph.cli.render import RunView, styled, terminal_gone, write_line
from jobgraph.cli.run import terminal_reports
from jobgraph.config import load
from jobgraph.config.params import parse_assignments
from jobgraph.scheduler import live_lease_holder
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments, Fire


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "-"


@reported_as("nothing was deployed.")
def deploy(file: Path, store: str | None = None, runner: str | None = None, params: list[str] | None = None) -> None:
    """Store the pipeline's snapshot as a version (a new one only if its content changed) and its next fire time;
    `--param` values become its params' defaults."""
    pipeline = load(file, runner)
    given = parse_assignments(params or [])
    deployed_pipelines.with_deployed_params(pipeline, given, file)  # checked before the store is opened
    with Store(store_url(store)) as records:
        deployed = deployed_pipelines.deploy(records, pipeline, file, given)
    current = deployed.pipeline
    change = "new version" if deployed.new else "unchanged version"
    schedule = f"schedule '{pipeline.schedule}', next run {_when(current.next_fire_at)}" if pipeline.schedule \
        else "no schedule (run it with `jobgraph trigger`)"
    console.print(f"deployed {pipeline.name}: {change} {current.version}, {current.state}; {escape(schedule)}")


@reported
def pipelines(store: str | None = None, output: OutputFormat = OutputFormat.table) -> None:
    """A table of the deployed pipelines; a suspended one shows no next run.

    As JSON: `{"pipelines": [...]}` as GET /api/v1/pipelines gives them (queries.pipelines).
    """
    with Store(store_url(store)) as records:
        if output == OutputFormat.json:
            write_plain(json.dumps({"pipelines": queries.pipelines(records)}, indent=2))
            return
        table = Table(title="deployed pipelines", title_justify="left")
        for column in ("pipeline", "state", "version", "schedule", "last run (UTC)", "next run (UTC)", "note"):
            table.add_column(column, overflow="fold")
        for status in deployed_pipelines.statuses(records):
            deployed, last = status.pipeline, status.last_run
            last_text = f"{last.state} {last.started_at:%Y-%m-%d %H:%M:%S}" if last else "-"
            table.add_row(deployed.name, styled(deployed.state), deployed.version, escape(deployed.schedule or "-"),
                          last_text, _when(status.next_fire_at).removesuffix(" UTC"), escape(deployed.note or ""))
        console.print(table)


@reported
def suspend(name: str, store: str | None = None) -> None:
    """Mark the pipeline suspended, noting that it was by hand."""
    with Store(store_url(store)) as records:
        deployed = deployed_pipelines.suspend(records, name)
    console.print(f"{deployed.name} suspended")


@reported
def resume(name: str, store: str | None = None) -> None:
    """Mark the pipeline active with its failure count reset, its schedule anchored now."""
    with Store(store_url(store)) as records:
        deployed = deployed_pipelines.resume(records, name)
    console.print(f"{deployed.name} resumed; next run {_when(deployed.next_fire_at)}")


@reported
def trigger(name: str, store: str | None = None, runner: str | None = None, params: list[str] | None = None) -> None:
    """Record a request for the live service and report what it did with it; with no live service, run the
    deployed version here. `--param` values are checked against the deployed version before either."""
    given = parse_assignments(params or [])
    with Store(store_url(store)) as records:
        deployments = Deployments(records)
        deployed = deployments.get(name)
        plan = deployed_plan(deployments, deployed, runner, given, from_text=True, where="--param")
        holder = live_lease_holder(deployments, deployed_pipelines.now())
        if holder is not None:
            requested = request(deployments, deployed.name, "jobgraph trigger", plan.params)
            fire = _await_outcome(deployments, deployed.name, requested)
            if fire is not None:
                _report_outcome(deployed.name, outcome_of(fire, holder))
            console.print(f"{deployed.name}: the scheduler service {holder} stopped before taking the request "
                          "(request withdrawn); running it here")
        else:
            console.print(f"{deployed.name}: {no_service(deployments)}; running it here")
        reports = terminal_reports(records)
        resume_adopting(records, reports)
        result = execute(records, plan, runner, reports)
    raise typer.Exit(EXIT_CODES[result.state])


def _await_outcome(deployments: Deployments, name: str, requested: datetime) -> Fire | None:
    """Wait for the service's answer (app.trigger); Ctrl-C withdraws the request if the service has not taken it."""
    try:
        return await_outcome(deployments, name, requested)
    except KeyboardInterrupt:
        if deployments.withdraw_request(name, requested):
            errors.print(f"{name}: request withdrawn; nothing runs")
            raise typer.Exit(EXIT_CANCELLED) from None
        errors.print(f"{name}: the scheduler service has already taken the request; `jobgraph pipelines` shows it")
        raise typer.Exit(EXIT_CANCELLED) from None


def _report_outcome(name: str, outcome: TriggerOutcome) -> NoReturn:
    """Say what the service did with a request, with an exit code that matches it."""
    note = f": {outcome.note}" if outcome.note else ""
    if outcome.action == STARTED:
        console.print(f"{name}: run requested from the scheduler service ({outcome.holder}): run {outcome.run_id} "
                      "started")
        raise typer.Exit(EXIT_OK)
    if outcome.action == QUEUED:
        console.print(f"{name}: run requested from the scheduler service ({outcome.holder}): queued{escape(note)}")
        raise typer.Exit(EXIT_OK)
    assert outcome.action == SKIPPED
    console.print(f"{name}: the scheduler service ({outcome.holder}) skipped the request{escape(note)}")
    raise typer.Exit(EXIT_FAILED)


@reported
def drop(name: str, purge: bool = False, store: str | None = None) -> None:
    """Remove the deployment; with purge, also its history, once lost runs are closed (a live run refuses it)."""
    with Store(store_url(store)) as records:
        dropped = deployed_pipelines.drop(records, name, purge, lambda text: errors.print(escape(text)))
    if not purge:
        console.print(f"{escape(dropped.name)} dropped; its run history is kept")
        return
    done = "dropped" if dropped.was_deployed else "was not deployed"
    console.print(f"{escape(dropped.name)} {done}; purged {dropped.purged_runs} runs and their history")


@reported
def serve(store: str | None = None, runner: str | None = None, tick: float = 1.0, drain: bool = False,
          http: str | None = None) -> None:
    """Hold the scheduler's lease and run it: fire what is due, take requests, resume lost runs, until a signal."""

    def say(text: str) -> None:
        try:
            write_line(console, text)
        except OSError:  # the reader went away: the service goes on, its output stops
            silence(console.file)

    def note(text: str) -> None:
        errors.print(escape(text))

    with Store(store_url(store)) as records:
        alongside = None
        if http is not None:  # the web stack is loaded only then
            from jobgraph.cli.web import alongside_service

            alongside = alongside_service(records, records.url, http)
        serve_forever(records, runner, tick, drain, Reports(say, say, say, note),
                      lambda label: RunView(console, prefix=f"[{label}] "), lambda: terminal_gone(console), alongside)
