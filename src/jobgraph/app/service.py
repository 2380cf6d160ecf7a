"""The scheduler service: hold the scheduler's lease and run it (fire what is due, take requests, resume lost
runs) until told to stop, hosting its runs on one asyncio loop with a RunHost."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from jobgraph.app.cancel import watch_cancels
from jobgraph.app.host import RunHost
from jobgraph.app.pipelines import now
from jobgraph.app.reports import Reports
from jobgraph.engine import Listener
from jobgraph.errors import JobgraphError
from jobgraph.owner import owner_label
from jobgraph.scheduler import Scheduler, live_lease_holder
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from jobgraph.store.faults import store_name

LEASE_TTL_SECS = 15.0
"""How long the scheduler's lease lasts without renewal (at least three ticks)."""


Alongside = Callable[[RunHost, asyncio.Event], Awaitable[None]]
"""What a service also runs on its loop with its RunHost (the web server of `serve --http`): given the host and
the service's stop event, it returns once the event is set; if it ends sooner (it failed), the service stops."""


def serve(records: Store, runner: str | None, tick: float, drain: bool, reports: Reports,
          view_for: Callable[[str], Listener], on_hang_up: Callable[[], None],
          alongside: Alongside | None = None) -> None:
    """Run the scheduler on this store until SIGINT or SIGTERM; then cancel its runs (or with `drain` let them
    finish) and free the lease. `view_for(label)` shows a run; SIGHUP calls `on_hang_up` and the service goes on.
    `alongside` is stopped first, so that nothing starts a run while the service closes them."""
    deployments = Deployments(records)
    holder = owner_label()
    say = reports.say
    host = RunHost(records, runner, say, note=reports.note, view_for=view_for)
    scheduler = Scheduler(records, now, host.scheduled_run, holder, recover=host.recover,
                          lease_ttl_secs=max(LEASE_TTL_SECS, 3 * tick), on_message=say)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping() -> None:
            stop.set()
            scheduler.wake()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping)
        beside = None if alongside is None else asyncio.ensure_future(alongside(host, stop))
        if beside is not None:
            beside.add_done_callback(lambda _done: stopping())
        loop.add_signal_handler(signal.SIGHUP, on_hang_up)  # like nohup: serve on, quietly
        say(f"jobgraph serve: scheduler {holder}, store {store_name(records.url)}, tick {tick:g}s")
        # A cancel requested through the store cancels a run the scheduler started (the host watches its own).
        watcher = loop.create_task(watch_cancels(records, scheduler.running, say))
        waiting = False
        while not stop.is_set():
            try:
                held = await scheduler.tick()
            except Exception as exc:  # a busy or unreachable store must not end the service
                say(f"error: {exc}" if isinstance(exc, JobgraphError) else f"error: {exc!r}; retrying")
                held = True
            host.flush()
            if not held and not waiting:
                say(f"waiting: another scheduler holds the lease ({live_lease_holder(deployments, now())})")
            waiting = not held
            if not stop.is_set():
                await scheduler.wait(tick)
        failed = None
        if beside is not None:
            failed = (await asyncio.gather(beside, return_exceptions=True))[0]
        running = scheduler.running()
        say(f"stopping: {'draining' if drain else 'cancelling'} {len(running)} running run(s)")
        await host.stop(drain)
        await scheduler.shutdown(drain)
        await host.close(drain)
        watcher.cancel()
        say("stopped")
        if isinstance(failed, BaseException):
            raise failed

    asyncio.run(main())
