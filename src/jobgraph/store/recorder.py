"""The one writer of a run's events: it waits out store faults, keeps events in order, and never breaks the run.

The engine hands its essential listeners the events of each event-loop wake-up at once, before any
display sees them, and must not fail because the store does. A `RunRecorder` writes each batch in
one transaction (`Store.record_all`) before the engine goes on; when the store fails with a fault
that waiting may cure (a PostgreSQL restart, a full disk someone frees, a lock), it retries the same
write with backoff for up to `patience` seconds, so a short outage costs a pause and no record. If
the store stays down, or fails in a way waiting cannot cure, it calls `on_down(message)` once (the
CLI cancels the run and says why), keeps every later event in memory, in order, and tries to write
them again at each new batch and, for up to `patience` seconds more, at the end of the run. What it
still could not write stays unwritten: the run remains RUNNING under an owner that is about to
exit, and the next jobgraph start closes it (recovery). A batch the store refuses (not a fault: a
conflict, a run taken over) is written again one event at a time, so only the refused event is lost.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence

from jobgraph.engine.events import Event, RunEnded
from jobgraph.store.faults import StoreFault, conflict
from jobgraph.store.store import Store

PATIENCE_SECS = 20.0
"""How long a run waits for its store to come back before it is cancelled (a PostgreSQL restart takes a few s)."""

_FIRST_PAUSE, _LONGEST_PAUSE = 0.05, 2.0


class RunRecorder:
    """An engine listener that records a run in `store`; it says when it waits for the store and when it gives up."""

    essential = True
    """Should it ever raise, the engine cancels the run rather than run it unrecorded."""

    def __init__(self, store: Store, on_down: Callable[[str], None], on_wait: Callable[[str], None] | None = None,
                 patience: float = PATIENCE_SECS, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._on_down = on_down
        self._on_wait = on_wait
        self._patience = patience
        self._sleep = sleep
        self._clock = clock
        self._pending: deque[Event] = deque()
        self._in_doubt = 0
        """How many of the first pending events went in a write that failed in flight (0: none)."""
        self._singly = 0
        """How many of the first pending events to write one at a time (their batch was refused)."""
        self._down: str | None = None
        self._ended = False

    @property
    def unwritten(self) -> int:
        """How many events could not be written (0 once the store took them all)."""
        return len(self._pending)

    @property
    def down(self) -> str | None:
        """Why the store stopped taking this run's records, if it did."""
        return self._down

    @property
    def finished(self) -> bool:
        """The run's end is written, and every event before it: nothing more for this recorder to do."""
        return self._ended and not self._pending

    def flush(self) -> bool:
        """Try once more to write what the store did not take; True once nothing is left (for a long-lived service)."""
        self._flush(None)
        return not self._pending

    def __call__(self, event: Event) -> None:
        """Write `event` after every event before it; never raise."""
        self.record_all((event,))

    def record_all(self, events: Sequence[Event]) -> None:
        """Write `events` together, after every event before them; never raise."""
        self._pending.extend(events)
        if self._down is None or any(isinstance(event, RunEnded) for event in events):
            self._flush(self._clock() + self._patience)
        else:
            self._flush(None)

    def _flush(self, deadline: float | None) -> None:
        """Write pending events in order; wait out transient faults until `deadline` (None: try once)."""
        pause, waited = _FIRST_PAUSE, False
        while self._pending:
            # A batch that failed in flight is written again alone: its commit may have happened all the
            # same, and then writing it again conflicts (an insert of a row that is there): it is there.
            size = 1 if self._singly else self._in_doubt or len(self._pending)
            batch = list(itertools.islice(self._pending, size))
            try:
                self._store.record_all(batch)
            except StoreFault as fault:
                self._in_doubt = max(self._in_doubt, size)
                if not fault.transient or deadline is None or self._clock() + pause > deadline:
                    self._give_up(str(fault), waited=fault.transient and deadline is not None)
                    return
                if not waited and self._down is None:
                    self._tell(self._on_wait, f"{fault}; the run waits up to {self._patience:g}s for the store")
                waited = True
                self._sleep(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)
                continue
            except Exception as exc:  # a record the store refuses must not hold back the others
                refused = conflict(exc)
                if refused is not None and self._in_doubt:
                    self._done(size)
                    continue
                if size > 1:
                    self._singly = size  # which event of the batch is refused: one at a time tells
                    continue
                self._done(1)
                detail = str(exc) if refused is None else refused
                self._give_up(f"the store refused a record of run {batch[0].run_id} ({type(batch[0]).__name__}: "
                              f"{detail})", waited=False)
                return
            self._done(size)
            if waited and self._down is None:
                self._tell(self._on_wait, "the store is back; the run goes on")
                waited = False

    def _done(self, count: int) -> None:
        """The first `count` pending events are in the store (or refused: they never will be)."""
        for _ in range(count):
            self._ended = self._ended or isinstance(self._pending.popleft(), RunEnded)
        self._in_doubt = max(0, self._in_doubt - count)
        self._singly = max(0, self._singly - count)

    def _give_up(self, why: str, waited: bool) -> None:
        if self._down is not None:
            return
        self._down = why
        after = f" for {self._patience:g}s" if waited else ""
        self._tell(self._on_down, f"{why}; the store took no record{after}, so the run is cancelled (its jobs are "
                                  "stopped)")

    @staticmethod
    def _tell(whom: Callable[[str], None] | None, message: str) -> None:
        """Pass a message on; one that cannot be told (a closed terminal) must not stop the recording."""
        if whom is not None:
            with contextlib.suppress(Exception):
                whom(message)
