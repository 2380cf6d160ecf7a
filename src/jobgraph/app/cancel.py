"""Cancelling a run from another process: the request goes through the store, and the run's owner cancels it.

Only the process that runs a run can stop its jobs and record how they ended, and it may be on
another host, so nothing here signals a pid. `cancel_run` records a request on the run
(`Store.request_cancel`, store/cancel_requests.py); the owner, which watches its own runs
(`watch_cancels`, a cheap primary-key query every POLL_SECS), sees it and cancels the run exactly
as Ctrl-C there does: its jobs are killed, recorded CANCELLED, the finalizer runs, the run ends
CANCELLED (and `jobgraph run` exits 130). A run whose owner has died cannot answer, so
`cancel_run` closes it at once through recovery instead (its leftover processes killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from jobgraph.app.places import home
from jobgraph.engine.run import GraphRun, RunResult
from jobgraph.owner import owner_is_gone
from jobgraph.recovery import LOST_REASON, recover_lost_run
from jobgraph.runners.cgroups import remove_empty_cgroups
from jobgraph.states import RunState
from jobgraph.store import RunRecord, Store

POLL_SECS = 0.2
"""How often an owner reads the cancel requests of its runs: a request is acted on within about this."""

ANSWER_SECS = 30.0
"""How long `jobgraph cancel` waits for the run to end before it says its owner does not answer."""

Say = Callable[[str], None]


def _quiet(_text: str) -> None:
    """Say nothing."""


def cancel_run(records: Store, run_id: str, by: str, *, folder: Path | None = None,
               say: Say = _quiet) -> RunRecord:
    """Ask the owner of a running run (by id or unique prefix) to cancel it; return the run as it stands.

    The request is recorded once (of several at once, the first; `by` says who asked). If the run's
    jobgraph process has died, nobody would act on it: the run is closed here, by recovery, its
    leftover processes killed, and returned ended. A run that has ended raises StoreError saying
    how, and nothing is changed. `folder` is jobgraph's own (JOBGRAPH_HOME), which recovery uses.
    """
    run = records.request_cancel(run_id, by)
    return close_if_lost(records, run, folder, say)


def close_if_lost(records: Store, run: RunRecord, folder: Path | None = None, say: Say = _quiet) -> RunRecord:
    """A running run whose owner on this host has died is closed by recovery (its remote attempts cancelled,
    none kept to adopt: someone asked to cancel it); any other run is returned as it is."""
    if run.state != RunState.RUNNING or run.owner is None or not owner_is_gone(run.owner):
        return run
    requested = f"; cancelled at the request of {run.cancel_requested_by}" if run.cancel_requested_by else ""
    lost = recover_lost_run(records, run, folder or home(), reason=LOST_REASON + requested, adopt=False)
    remove_empty_cgroups()
    if lost is not None:
        remote = f" and cancelled {lost.cancelled} remote attempt(s)" if lost.cancelled else ""
        containers = f", {lost.containers} container(s)" if lost.containers else ""
        say(f"run {run.run_id}: its jobgraph process ({run.owner}) had died, so it was closed here: killed "
            f"{lost.killed} leftover process(es){containers}{remote}")
    return records.run(run.run_id)


def wait_ended(records: Store, run_id: str, timeout: float = ANSWER_SECS, *, folder: Path | None = None,
               say: Say = _quiet, poll_secs: float = 0.1) -> RunRecord:
    """Wait until the run has ended, up to `timeout` seconds; the run as last read (still RUNNING if it has not).

    Should its owner die meanwhile, the run is closed by recovery (`close_if_lost`) rather than waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        run = close_if_lost(records, records.run(run_id), folder, say)
        if run.state != RunState.RUNNING or time.monotonic() >= deadline:
            return run
        time.sleep(poll_secs)


async def watch_cancels(records: Store, runs: Callable[[], Iterable[GraphRun]], say: Say,
                        warn: Say | None = None, poll_secs: float = POLL_SECS) -> None:
    """Until cancelled: cancel each of `runs()` (the runs this process owns) whose cancel was requested.

    Each poll is one query of only those runs' rows, on the event loop between engine steps. A run is
    cancelled once, with `GraphRun.cancel()`, as Ctrl-C does; `say` tells who asked. Should the store
    fail to answer, `warn` says so once (default: `say` with "warning: ") and the next poll tries again:
    the runs go on.
    """
    warn = warn or (lambda text: say(f"warning: {text}"))
    cancelled: set[str] = set()
    failing = False
    while True:
        try:
            live = {graph_run.run_id: graph_run for graph_run in runs() if graph_run.run_id not in cancelled}
            requested = records.cancel_requests(list(live)) if live else {}
        except Exception as exc:  # a busy or unreachable store must not end the run
            if not failing:
                with contextlib.suppress(Exception):
                    warn(f"cannot read cancel requests from the store ({exc}); trying again every {poll_secs:g}s")
            failing = True
        else:
            failing = False
            for run_id, by in requested.items():
                cancelled.add(run_id)
                with contextlib.suppress(Exception):  # a closed terminal must not keep the run going
                    say(f"run {run_id}: cancel requested by {by}; cancelling it")
                live[run_id].cancel()
        await asyncio.sleep(poll_secs)


async def watched(records: Store, graph_run: GraphRun, say: Say, warn: Say | None = None) -> RunResult:
    """Run `graph_run` (owned by this process) to its end, cancelling it if someone asks through the store."""
    watcher = asyncio.create_task(watch_cancels(records, lambda: (graph_run,), say, warn))
    try:
        return await graph_run.run()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
