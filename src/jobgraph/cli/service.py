"""Deployed pipelines and the scheduler service: deploy, pipelines, suspend, resume, trigger, drop, serve."""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from jobgraph.app.cancel import watch_cancels
from jobgraph.cli.common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    console,
    errors,
    home,
    reported,
    silence,
    store_url,
)
from jobgraph.cli.render import RunView, styled, terminal_gone, write_line
from jobgraph.cli.run import (
    EXIT_CODES,
    claim_resumptions,
    execute,
    job_secrets,
    report_lost_runs,
    resume_adopting,
    runner_factory,
    store_patience,
)
from jobgraph.config import Pipeline, check_pipeline, load
from jobgraph.engine import Listener
from jobgraph.engine.run import GraphRun, RunResult
from jobgraph.errors import JobgraphError
from jobgraph.owner import owner_label
from jobgraph.runners import AnyRunner
from jobgraph.schedule import parse_schedule
from jobgraph.scheduler import LEASE, Scheduler, live_lease_holder
from jobgraph.store import Store
from jobgraph.store.deployments import ACTIVE, SUSPENDED, DeployedPipeline, Deployments, Fire
from jobgraph.store.recorder import RunRecorder

LEASE_TTL_SECS = 15.0
"""How long the scheduler's lease lasts without renewal (at least three ticks)."""
REQUEST_GRACE_SECS = 2.0
"""How long `trigger` waits for the fire of a request that a service took just before it died."""


def _now() -> datetime:
    return datetime.now(UTC)


def _next_fire(schedule: str | None, anchor: datetime) -> datetime | None:
    return parse_schedule(schedule).next_after(anchor, anchor) if schedule else None


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "-"


@reported
def deploy(file: Path, store: str | None = None, runner: str | None = None) -> None:
    """Store the pipeline's snapshot as a version (a new one only if its content changed) and its next fire time."""
    pipeline = load(file, runner)
    now = _now()
    with Store(store_url(store)) as records:
        deployments = Deployments(records)
        version, new = deployments.deploy(pipeline.name, pipeline.model_dump_json(), str(file.resolve()),
                                          pipeline.schedule, now, _next_fire(pipeline.schedule, now))
        deployed = deployments.get(pipeline.name)
    change = "new version" if new else "unchanged version"
    schedule = f"schedule '{pipeline.schedule}', next run {_when(deployed.next_fire_at)}" if pipeline.schedule \
        else "no schedule (run it with `jobgraph trigger`)"
    console.print(f"deployed {pipeline.name}: {change} {version}, {deployed.state}; {escape(schedule)}")


@reported
def pipelines(store: str | None = None) -> None:
    """A table of the deployed pipelines; a suspended one shows no next run."""
    with Store(store_url(store)) as records:
        table = Table(title="deployed pipelines", title_justify="left")
        for column in ("pipeline", "state", "version", "schedule", "last run (UTC)", "next run (UTC)", "note"):
            table.add_column(column, overflow="fold")
        for deployed in Deployments(records).all():
            last = records.runs(1, deployed.name)
            last_text = f"{last[0].state} {last[0].started_at:%Y-%m-%d %H:%M:%S}" if last else "-"
            upcoming = deployed.next_fire_at if deployed.state == ACTIVE else None
            table.add_row(deployed.name, styled(deployed.state), deployed.version, escape(deployed.schedule or "-"),
                          last_text, _when(upcoming).removesuffix(" UTC"), escape(deployed.note or ""))
        console.print(table)


@reported
def suspend(name: str, store: str | None = None) -> None:
    """Mark the pipeline suspended, noting that it was by hand."""
    with Store(store_url(store)) as records:
        deployments = Deployments(records)
        deployed = deployments.get(name)
        deployments.update(deployed.name, state=SUSPENDED, note="suspended by hand")
    console.print(f"{deployed.name} suspended")


@reported
def resume(name: str, store: str | None = None) -> None:
    """Mark the pipeline active with its failure count reset, its schedule anchored now."""
    now = _now()
    with Store(store_url(store)) as records:
        deployments = Deployments(records)
        deployed = deployments.get(name)
        upcoming = _next_fire(deployed.schedule, now)
        deployments.update(deployed.name, state=ACTIVE, failures_in_row=0, note=None, anchor=now,
                           next_fire_at=upcoming)
    console.print(f"{deployed.name} resumed; next run {_when(upcoming)}")


@reported
def trigger(name: str, store: str | None = None, runner: str | None = None) -> None:
    """Record a request for the live service and report what it did with it; with no live service, run the
    deployed version here."""
    with Store(store_url(store)) as records:
        deployments = Deployments(records)
        deployed = deployments.get(name)
        holder = live_lease_holder(deployments, _now())
        if holder is not None:
            now = _now()  # the request's time: its record wakes the service (store.wakeup)
            deployments.record_fire(deployed.name, now, "REQUESTED", now, note="jobgraph trigger")
            outcome = _await_outcome(deployments, deployed.name, now)
            if outcome is not None:
                _report_outcome(deployed.name, holder, outcome)
            console.print(f"{deployed.name}: the scheduler service {holder} stopped before taking the request "
                          "(request withdrawn); running it here")
        else:
            console.print(f"{deployed.name}: {_no_service(deployments)}; running it here")
        resume_adopting(records, report_lost_runs(records))
        pipeline = check_pipeline(Pipeline.model_validate_json(deployments.snapshot(deployed.name, deployed.version)),
                                  f"pipeline {deployed.name}", runner)
        result = execute(pipeline, records, runner, trigger="trigger", version=deployed.version)
    raise typer.Exit(EXIT_CODES[result.state])


def _no_service(deployments: Deployments) -> str:
    lease = deployments.lease(LEASE)
    if lease is None:
        return "no scheduler service is running on this store"
    if lease.expires_at >= _now():
        return f"no scheduler service is running on this store (its last one, {lease.holder}, has died)"
    return (f"no scheduler service is running on this store (the lease of {lease.holder} ran out "
            f"{_when(lease.expires_at)})")


def _await_outcome(deployments: Deployments, name: str, requested: datetime) -> Fire | None:
    """Wait until the service has acted on a request; None if no live service took it (it is withdrawn then).

    Bounded: a live service takes requests every tick and renews its lease; once no live service holds the
    lease, the request is withdrawn (compare-and-set against the service taking it at that very moment).
    """
    orphaned_since: float | None = None
    try:
        while True:
            outcome = deployments.request_outcome(name, requested)
            if outcome is not None:
                return outcome
            if live_lease_holder(deployments, _now()) is not None:
                orphaned_since = None
            elif deployments.withdraw_request(name, requested):
                return None
            elif orphaned_since is None:
                orphaned_since = time.monotonic()
            elif time.monotonic() - orphaned_since > REQUEST_GRACE_SECS:
                raise JobgraphError(f"the scheduler service took the request for {name} and stopped before "
                                    "starting it; nothing runs: trigger it again")
            time.sleep(0.05)
    except KeyboardInterrupt:
        if deployments.withdraw_request(name, requested):
            errors.print(f"{name}: request withdrawn; nothing runs")
            raise typer.Exit(EXIT_CANCELLED) from None
        errors.print(f"{name}: the scheduler service has already taken the request; `jobgraph pipelines` shows it")
        raise typer.Exit(EXIT_CANCELLED) from None


def _report_outcome(name: str, holder: str, outcome: Fire) -> NoReturn:
    """Say what the service did with a request, with an exit code that matches it."""
    note = f": {outcome.note}" if outcome.note else ""
    if outcome.action == "STARTED":
        console.print(f"{name}: run requested from the scheduler service ({holder}): run {outcome.run_id} started")
        raise typer.Exit(EXIT_OK)
    if outcome.action == "QUEUED":
        console.print(f"{name}: run requested from the scheduler service ({holder}): queued{escape(note)}")
        raise typer.Exit(EXIT_OK)
    if outcome.action == "SKIPPED":
        console.print(f"{name}: the scheduler service ({holder}) skipped the request{escape(note)}")
        raise typer.Exit(EXIT_FAILED)
    raise JobgraphError(f"the scheduler service ({holder}) could not start {name}{note}")


@reported
def drop(name: str, purge: bool = False, store: str | None = None) -> None:
    """Remove the deployment; with purge, also its history, once lost runs are closed (a live run refuses it)."""
    with Store(store_url(store)) as records:
        if purge:
            report_lost_runs(records)  # a run whose process died is closed first, so only live runs block
        dropped = Deployments(records).drop(name, purge)
    if not purge:
        console.print(f"{escape(dropped.name)} dropped; its run history is kept")
        return
    done = "dropped" if dropped.was_deployed else "was not deployed"
    console.print(f"{escape(dropped.name)} {done}; purged {dropped.purged_runs} runs and their history")


@reported
def serve(store: str | None = None, runner: str | None = None, tick: float = 1.0, drain: bool = False) -> None:
    """Hold the scheduler's lease and run it: fire what is due, take requests, resume lost runs, until a signal."""
    with Store(store_url(store)) as records:
        deployments = Deployments(records)
        runners: dict[str, AnyRunner] = {}
        holder = owner_label()

        def say(text: str) -> None:
            try:
                write_line(console, text)
            except OSError:  # the reader went away: the service goes on, its output stops
                silence(console.file)

        recorders: list[RunRecorder] = []
        patience = store_patience()

        def recorded(label: str, build: Callable[[list[Listener]], GraphRun]) -> GraphRun:
            """A run recorded through a RunRecorder: it waits out a store fault, or cancels the run; what it
            could not write is written again at each tick, once the store is back."""
            cancel: list[Callable[[], None]] = []

            def down(message: str) -> None:
                say(f"[{label}] error: {message}")
                asyncio.get_running_loop().call_soon(cancel[0])

            recorder = RunRecorder(records, down, lambda message: say(f"[{label}] warning: {message}"), patience)
            recorders.append(recorder)
            graph_run = build([recorder, RunView(console, prefix=f"[{label}] ")])
            cancel.append(graph_run.cancel)
            return graph_run

        def start_run(deployed: DeployedPipeline, pipeline: Pipeline, scheduled: datetime,
                      how: str) -> GraphRun:
            checked = check_pipeline(pipeline, f"pipeline {deployed.name}", runner)
            return recorded(deployed.name, lambda listeners: GraphRun(
                checked, runner_factory(checked, runner, runners), listeners, home() / "logs",
                scheduled_time=scheduled, secrets=job_secrets(checked), trigger=how, version=deployed.version))

        resumed: list[tuple[GraphRun, asyncio.Task[RunResult]]] = []

        def recover() -> None:
            """Close lost runs; resume those that left remote attempts, alongside the scheduled runs."""
            for resumption in claim_resumptions(records, report_lost_runs(records)):
                say(resumption.announce())
                runner_for = runner_factory(resumption.pipeline, runner, runners)
                graph_run = recorded(resumption.previous.pipeline, functools.partial(resumption.graph_run, runner_for))
                resumed.append((graph_run, asyncio.get_running_loop().create_task(graph_run.run())))

        scheduler = Scheduler(records, _now, start_run, holder, recover=recover,
                              lease_ttl_secs=max(LEASE_TTL_SECS, 3 * tick), on_message=say)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()

            def stopping() -> None:
                stop.set()
                scheduler.wake()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stopping)
            loop.add_signal_handler(signal.SIGHUP, terminal_gone, console)  # like nohup: serve on, quietly
            say(f"jobgraph serve: scheduler {holder}, store {records.url}, tick {tick:g}s")
            watcher = loop.create_task(watch_cancels(  # a cancel request through the store cancels a run of ours
                records, lambda: [*scheduler.running(), *(r for r, t in resumed if not t.done())], say))
            waiting = False
            while not stop.is_set():
                try:
                    held = await scheduler.tick()
                except Exception as exc:  # a busy or unreachable store must not end the service
                    say(f"error: {exc}" if isinstance(exc, JobgraphError) else f"error: {exc!r}; retrying")
                    held = True
                for recorder in recorders:
                    recorder.flush()
                recorders[:] = [r for r in recorders if not r.finished]
                if not held and not waiting:
                    say(f"waiting: another scheduler holds the lease ({live_lease_holder(deployments, _now())})")
                waiting = not held
                if not stop.is_set():
                    await scheduler.wait(tick)
            running = scheduler.running()
            say(f"stopping: {'draining' if drain else 'cancelling'} {len(running)} running run(s)")
            if not drain:
                for graph_run, _task in resumed:
                    graph_run.cancel()
            await asyncio.gather(*(task for _run, task in resumed), return_exceptions=True)
            await scheduler.shutdown(drain)
            for each in runners.values():
                await each.aclose()
            watcher.cancel()
            say("stopped")

        asyncio.run(main())
