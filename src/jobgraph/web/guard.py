"""What no request may hold and what every response carries, whatever route answers it (the app's outermost layer).

- A NUL character in a request's path or query is refused (400) before anything reads it: PostgreSQL
  cannot hold one in a text value, so it would otherwise fail deep in a query on one backend only.
- Every response says how it may be used: never sniffed as another type, never framed by another
  site (clickjacking of the action buttons), no referrer to other sites, not kept by a cache (pages
  and API answers hold what a token let someone read; only the package's static files may be kept),
  and a Content-Security-Policy: a page's own (set by jobgraph.web.pages) or, for JSON, logs and
  event streams, one that lets nothing run if a browser is led to open them as a document.
A route may set any of these headers itself; the guard only adds the ones missing.
"""

from __future__ import annotations

import json

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOTHING_RUNS = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; sandbox"
"""The policy of every response that is not one of the page's own documents."""

PAGE = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
"""The policy of an HTML response that set none (the bare sign-in form): the page's own, forms allowed."""

ALWAYS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "same-origin"}


class Guard:
    """Refuses requests holding a NUL; adds the missing safety headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"].lower() or b"\x00" in scope["query_string"]:
            await _refuse_nul(send)
            return
        static = scope["path"].startswith("/static/")

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_headers(MutableHeaders(scope=message), static)
            await send(message)

        await self.app(scope, receive, send_guarded)


def add_headers(headers: MutableHeaders, static: bool = False) -> None:
    """Add to `headers` the safety headers they lack (for responses sent outside the guard: a crash's)."""
    for name, value in ALWAYS.items():
        headers.setdefault(name, value)
    if not static:
        headers.setdefault("cache-control", "no-store")
    html = headers.get("content-type", "").startswith("text/html")
    headers.setdefault("content-security-policy", PAGE if html else NOTHING_RUNS)


async def _refuse_nul(send: Send) -> None:
    body = json.dumps({"error": "the request's path or query holds a NUL character (%00); no name or "
                                "value here can"}).encode()
    headers = MutableHeaders({"content-type": "application/json", "content-length": str(len(body))})
    add_headers(headers, static=False)
    await send({"type": "http.response.start", "status": 400, "headers": headers.raw})
    await send({"type": "http.response.body", "body": body})
