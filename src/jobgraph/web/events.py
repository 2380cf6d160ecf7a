"""GET /api/v1/runs/{run_id}/events: a run's changes as Server-Sent Events, whoever writes them.

The run may be written by any process (a `jobgraph run` in a terminal, a scheduler service, this
server), so the stream polls the store: each poll reads a cheap fingerprint of the run
(queries.run_signature: a handful of aggregates), and only when it moved reads the run and sends
what changed; all the streams of one run share that reading (web/watch.py). First `event: snapshot`
(the run as GET /runs/{id} has it), then `event: change` ({"run", "jobs": changed jobs, "attempts":
changed attempts}), then `event: end` once the run has ended; a comment line every HEARTBEAT_SECS
keeps proxies from closing a quiet stream. A stream opened with a token ends with `event: refused`
at its first poll after that token was revoked or expired: a revoked token reads nothing more.

The response is its own small ASGI app: one task sends, another waits for the client's
`http.disconnect` and cancels the sender at once, so a closed tab never leaves a poller behind
(`streams` counts the live ones; tests/web/test_api.py holds it to zero).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from jobgraph.app import queries
from jobgraph.states import RunState
from jobgraph.store import Store
from jobgraph.store.tokens import Tokens, utcnow
from jobgraph.web import auth, watch

POLL_SECS = 0.3
"""How often a stream looks at the store for a change."""

MAX_STREAMS = 1000
"""The most event streams a server keeps open at once (each holds a connection and some memory): more get 503."""

HEARTBEAT_SECS = 15.0
"""How long a stream stays silent at most: then a comment line."""


class Streams:
    """How many event streams are open now (the server's own bookkeeping, and what tests check), the runs they
    show (one reading of each for all its streams: web/watch.py), and whether the server is stopping: then
    each stream finishes its response at its next poll, without `end` (the run goes on; a browser's
    EventSource reconnects), so a stopping server need not cut them off."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit = limit
        self.open = 0
        self.closing = False
        self.watches = watch.Watches()
        self._tokens: dict[str, tuple[float, bool]] = {}

    async def token_live(self, tokens: Tokens, presented: str, max_age: float) -> bool:
        """Whether a token still holds, checked at most once per `max_age` for all the streams opened with it."""
        checked = self._tokens.get(presented)
        if checked is None or time.monotonic() - checked[0] >= max_age:
            live = await run_in_threadpool(tokens.verify, presented, utcnow()) is not None
            self._tokens[presented] = checked = (time.monotonic(), live)
        return checked[1]


async def run_events(records: Store, run_id: str, streams: Streams, poll_secs: float = POLL_SECS,
                     allowed: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[bytes]:
    """The stream's bytes: snapshot, changes as the store shows them, end (unless the server stops first).

    `allowed` (when the client signed in with a token) is asked before each poll whether the token
    still holds: once it is revoked or expired the stream says so (`event: refused`) and ends.
    """
    streams.watches.join(run_id)
    try:
        shown = await streams.watches.latest(records, run_id, poll_secs)  # joiners share a reading too
        yield shown.snapshot()
        quiet_since = time.monotonic()
        while shown.detail["run"]["state"] == RunState.RUNNING.value:
            await anyio.sleep(poll_secs)
            if streams.closing:
                return
            if allowed is not None and not await allowed():
                yield watch.event("refused", {"error": "the token is unknown, revoked or expired"})
                return
            latest = await streams.watches.latest(records, run_id, poll_secs)
            if latest.version != shown.version:
                yield latest.change_from(shown)
                shown, quiet_since = latest, time.monotonic()
            elif time.monotonic() - quiet_since >= HEARTBEAT_SECS:
                yield b": keep-alive\n\n"
                quiet_since = time.monotonic()
        yield watch.event("end", {"run_id": run_id, "state": shown.detail["run"]["state"]})
    finally:
        streams.watches.leave(run_id)


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
    if streams.open >= streams.limit:
        return auth.error(503, f"{streams.open} event streams are open on this server, the most it keeps; "
                               "try again later", **{"Retry-After": "10"})
    presented = auth.presented_token(request)
    poll_secs: float = request.app.state.poll_secs
    allowed = None
    if presented:
        tokens = Tokens(records)

        async def still_live() -> bool:
            return await streams.token_live(tokens, presented, poll_secs)

        allowed = still_live
    return EventStream(run_events(records, run_id, streams, poll_secs, allowed), streams)
