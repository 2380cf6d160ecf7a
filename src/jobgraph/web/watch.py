"""One reader per watched run, however many event streams show it: the store is read once per poll, not once per client.

Fifty browsers on a changing 5,000-job run would otherwise each read the whole run and diff it at every
change: seconds of work per poll, the server's threads all busy and its memory growing with each
client. Here the streams of a run share its latest reading (`Seen`): a reading is at most `max_age`
old, one stream reads while the others wait for that reading, and the `change` event from one
version to the next is encoded once for every stream that showed the version before.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

from jobgraph.app import queries
from jobgraph.store import Store


def event(name: str, data: Any) -> bytes:
    """One Server-Sent Event; its data is one line of JSON (a newline in any value is escaped by JSON)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def changes(before: queries.Json, after: queries.Json) -> queries.Json:
    """What differs between two run_detail results: the run (always), the jobs and attempts that changed."""
    jobs = {job["name"]: job for job in before["jobs"]}
    tried = {(a["job"], a["attempt"]): a for a in before["attempts"]}
    return {"run": after["run"], "jobs": [job for job in after["jobs"] if jobs.get(job["name"]) != job],
            "attempts": [a for a in after["attempts"] if tried.get((a["job"], a["attempt"])) != a]}


@dataclass
class Seen:
    """One reading of a run: its version (1, 2, ... as it changes), what GET /runs/{id} shows, and its events."""

    version: int
    detail: queries.Json
    change: bytes
    """The `change` event from the version before (b"" for the first reading)."""
    _snapshot: bytes = b""

    def snapshot(self) -> bytes:
        """The `snapshot` event of this reading (encoded once, for the streams that start on it)."""
        if not self._snapshot:
            self._snapshot = event("snapshot", self.detail)
        return self._snapshot

    def change_from(self, shown: Seen) -> bytes:
        """The `change` event for a stream that last showed `shown`."""
        if shown.version == self.version - 1:
            return self.change
        return event("change", changes(shown.detail, self.detail))


@dataclass
class _Watch:
    users: int = 0
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    read_at: float = float("-inf")
    signature: tuple[Any, ...] = ()
    seen: Seen | None = None


class Watches:
    """The runs that event streams show now, each read by one stream at a time for all of them."""

    def __init__(self) -> None:
        self._runs: dict[str, _Watch] = {}

    def join(self, run_id: str) -> None:
        """A stream starts showing `run_id`."""
        self._runs.setdefault(run_id, _Watch()).users += 1

    def leave(self, run_id: str) -> None:
        """A stream of `run_id` ended; its run's reading is dropped with the last one."""
        watch = self._runs[run_id]
        watch.users -= 1
        if watch.users == 0:
            del self._runs[run_id]

    def watched(self) -> int:
        """How many runs have a reading kept now."""
        return len(self._runs)

    async def latest(self, records: Store, run_id: str, max_age: float) -> Seen:
        """The run's reading, read again if it is older than `max_age` (its detail only if its signature moved)."""
        watch = self._runs[run_id]
        async with watch.lock:
            if watch.seen is not None and time.monotonic() - watch.read_at < max_age:
                return watch.seen
            signature = await run_in_threadpool(queries.run_signature, records, run_id)
            watch.read_at = time.monotonic()
            if watch.seen is None or signature != watch.signature:
                detail = await run_in_threadpool(queries.run_detail, records, run_id)
                before = watch.seen
                watch.seen = Seen(1 if before is None else before.version + 1, detail,
                                  b"" if before is None else event("change", changes(before.detail, detail)))
                watch.signature = signature
            return watch.seen
