"""Delivering a run's events: recorded first, one batch per event-loop wake-up, then shown.

A job goes through five events (queued, running, attempt started, attempt ended, succeeded), and
most of them happen within one wake-up of the event loop (a job ends, its successor is queued and
started). Writing each in a transaction of its own costs a commit per event. So events are queued
as the engine emits them and delivered when the loop has nothing else ready to run, just before it
waits again: first to the essential listeners (the store), the whole batch at once (one
transaction), then to the others (the live view), one event at a time. A display therefore never
shows an event that is not recorded yet, and a crash loses at most what nobody was told.

The engine also flushes at once where a record must come before an act: before it starts a job (so
the run and the attempt are in the store before any process or remote job exists that recovery
would have to find) and when a backend has named an attempt (its handle is recorded before the
engine waits for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from jobgraph.engine.events import Event, Listener, RunEnded

MAX_DEFERRALS = 64
"""How many loop iterations a flush may wait for the loop to be idle, so a loop that is never idle still records."""


class Delivery:
    """The listeners of one run, and the events emitted but not yet delivered to them."""

    def __init__(self, listeners: Sequence[Listener], on_lost_record: Callable[[], None]) -> None:
        self._essential = [listener for listener in listeners if getattr(listener, "essential", False)]
        self._others = [listener for listener in listeners if listener not in self._essential]
        self._on_lost_record = on_lost_record
        self._queued: list[Event] = []
        self._scheduled = False
        self.failures: list[tuple[Listener, Exception]] = []
        """Each listener that raised, and what it raised: it was told nothing more."""

    def send(self, event: Event) -> None:
        """Queue `event`; it is delivered at the end of this wake-up of the loop (at once outside a loop)."""
        self._queued.append(event)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self._when_idle, loop, 0)

    def _when_idle(self, loop: asyncio.AbstractEventLoop, deferred: int) -> None:
        """Flush once the loop has no other callback ready (CPython's loops keep them in `_ready`; on a
        loop without it, at once): what those callbacks emit joins the same batch."""
        if self._queued and deferred < MAX_DEFERRALS and getattr(loop, "_ready", None):
            loop.call_soon(self._when_idle, loop, deferred + 1)
            return
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Deliver every queued event now: all to each essential listener, then each to the others.

        An essential listener that raises is dropped and, unless the run has ended, the run is
        cancelled (`on_lost_record`): nothing runs unrecorded. Any other listener that raises is
        dropped and never touches the run (a display whose reader went away just stops).
        """
        batch, self._queued = self._queued, []
        if not batch:
            return
        for listener in list(self._essential):
            try:
                record_all = getattr(listener, "record_all", None)
                if record_all is not None:
                    record_all(batch)
                else:
                    for event in batch:
                        listener(event)
            except Exception as exc:
                self._essential.remove(listener)
                self.failures.append((listener, exc))
                if not isinstance(batch[-1], RunEnded):
                    self._on_lost_record()
        for listener in list(self._others):
            try:
                for event in batch:
                    listener(event)
            except Exception as exc:
                self._others.remove(listener)
                self.failures.append((listener, exc))
