"""How the scheduler sleeps between ticks: until a time, a wake-up from another process, or `wake()`.

Split from scheduler.py, which decides what fires and when; this module only keeps the store's wake-up
listener (store.wakeup: PostgreSQL LISTEN/NOTIFY, a FIFO beside a SQLite file) open while the scheduler
holds the lease, hears it on the event loop, and falls back on polling, with one warning, where the store
cannot wake anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from jobgraph.store.deployments import Deployments
from jobgraph.store.wakeup import Listener, WakeupUnavailable


class Wakeups:
    """The wake-up listener of one scheduler, and the event its `wait` sleeps on."""

    def __init__(self, deployments: Deployments, on_message: Callable[[str], None]) -> None:
        self._deployments = deployments
        self._on_message = on_message
        self.woken = asyncio.Event()
        """Set by a wake-up heard from the store or by the scheduler's `wake()`; cleared by `sleep`."""
        self._listener: tuple[Listener, int] | None = None
        """The wake-up listener and its file descriptor (kept: a broken connection may not tell it any more)."""
        self._unavailable: str | None = None

    @property
    def listening(self) -> bool:
        """Whether a wake-up from another process would end a sleep (else only a poll interval does)."""
        return self._listener is not None

    def listen(self, wanted: bool) -> bool:
        """Open or close the wake-up listener as `wanted`; True when it has just been opened."""
        if not wanted:
            self.stop()
            return False
        if self._listener is not None:
            return False
        try:
            listener = self._deployments.listen()
        except WakeupUnavailable as exc:
            if str(exc) != self._unavailable:
                self._on_message(f"warning: no wake-ups from the store ({exc}); polling it instead")
            self._unavailable = str(exc)
            return False
        self._unavailable = None
        descriptor = listener.fileno()
        asyncio.get_running_loop().add_reader(descriptor, self._heard)
        self._listener = (listener, descriptor)
        return True

    async def sleep(self, delay: float) -> bool:
        """Sleep at most `delay` seconds, less if woken; whether it was woken (even when a zero sleep timed out)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.woken.wait(), delay)
        woken = self.woken.is_set()
        self.woken.clear()
        return woken

    def _heard(self) -> None:
        assert self._listener is not None
        try:
            self._listener[0].drain()
        except WakeupUnavailable as exc:
            self._on_message(f"warning: {exc}; polling the store until it can listen again")
            self.stop()
        self.woken.set()

    def stop(self) -> None:
        """Close the listener, if open: sleeps end by time (or `wake()`) only."""
        if self._listener is not None:
            listener, descriptor = self._listener
            asyncio.get_running_loop().remove_reader(descriptor)
            listener.close()
            self._listener = None
