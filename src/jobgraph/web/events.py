"""GET /api/v1/runs/{run_id}/events: a run's changes as Server-Sent Events, whoever writes them.

The run may be written by any process (a `jobgraph run` in a terminal, a scheduler service, this
server), so the stream polls the store: each poll reads a cheap fingerprint of the run
(queries.run_signature: a handful of aggregates), and only when it moved reads the run and sends
what changed. First `event: snapshot` (the run as GET /runs/{id} has it), then `event: change`
({"run", "jobs": changed jobs, "attempts": changed attempts}), then `event: end` once the run has
ended; a comment line every HEARTBEAT_SECS keeps proxies from closing a quiet stream.

The response is its own small ASGI app: one task sends, another waits for the client's
`http.disconnect` and cancels the sender at once, so a closed tab never leaves a poller behind
(`streams` counts the live ones; tests/web/test_api.py holds it to zero).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from jobgraph.app import queries
from jobgraph.states import RunState
from jobgraph.store import Store

POLL_SECS = 0.3
"""How often a stream looks at the store for a change."""

HEARTBEAT_SECS = 15.0
"""How long a stream stays silent at most: then a comment line."""


class Streams:
    """How many event streams are open now (the server's own bookkeeping, and what tests check), and whether
    the server is stopping: then each stream finishes its response at its next poll, without `end` (the run
    goes on; a browser's EventSource reconnects), so a stopping server need not cut them off."""

    def __init__(self) -> None:
        self.open = 0
        self.closing = False


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _changes(before: queries.Json, after: queries.Json) -> queries.Json:
    """What differs between two run_detail results: the run (always), the jobs and attempts that changed."""
    jobs = {job["name"]: job for job in before["jobs"]}
    tried = {(a["job"], a["attempt"]): a for a in before["attempts"]}
    return {"run": after["run"], "jobs": [job for job in after["jobs"] if jobs.get(job["name"]) != job],
            "attempts": [a for a in after["attempts"] if tried.get((a["job"], a["attempt"])) != a]}


async def run_events(records: Store, run_id: str, streams: Streams,
                     poll_secs: float = POLL_SECS) -> AsyncIterator[bytes]:
    """The stream's bytes: snapshot, changes as the store shows them, end (unless the server stops first)."""
    signature = await run_in_threadpool(queries.run_signature, records, run_id)
    shown = await run_in_threadpool(queries.run_detail, records, run_id)
    yield _event("snapshot", shown)
    quiet_since = time.monotonic()
    while shown["run"]["state"] == RunState.RUNNING.value:
        await anyio.sleep(poll_secs)
        if streams.closing:
            return
        now = await run_in_threadpool(queries.run_signature, records, run_id)
        if now != signature:
            signature = now
            latest = await run_in_threadpool(queries.run_detail, records, run_id)
            yield _event("change", _changes(shown, latest))
            shown, quiet_since = latest, time.monotonic()
        elif time.monotonic() - quiet_since >= HEARTBEAT_SECS:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
    yield _event("end", {"run_id": run_id, "state": shown["run"]["state"]})


class EventStream(Response):
    """A text/event-stream response that stops its producer as soon as the client goes away."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], streams: Streams) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # no body: no Content-Length
        self.chunks = chunks
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.streams.open += 1
        try:
            async with anyio.create_task_group() as group:

                async def produce() -> None:
                    await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                    async for chunk in self.chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(produce)
                group.start_soon(watch)
        except OSError:  # the connection broke while sending: the client is gone
            pass
        finally:
            await _close(self.chunks)
            self.streams.open -= 1


async def _close(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await close()


async def events(request: Request) -> Response:
    """GET /api/v1/runs/{run_id}/events (404 JSON for an unknown run, checked before the stream starts)."""
    records: Store = request.app.state.records
    run_id = request.path_params["run_id"]
    await run_in_threadpool(queries.run_signature, records, run_id)  # raises NotFound -> 404
    streams: Streams = request.app.state.streams
    return EventStream(run_events(records, run_id, streams, request.app.state.poll_secs), streams)
