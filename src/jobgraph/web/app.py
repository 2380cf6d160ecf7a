"""The web application: the API's routes, the page's routes, the auth middleware, errors as JSON.

`create_app(store_url)` opens its own Store (at `app.state.records`, closed with the app); a RunHost
given to it (`jobgraph web` and `serve --http` make one on the server's loop, with a Store of its own)
starts the runs that retry and trigger ask for. GET /metrics serves Prometheus metrics read from the store
(jobgraph.web.metrics), a read like any other. Whoever made the host closes it once the server has
stopped, cancelling what it runs (cli/web.py).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from jobgraph.app import queries
from jobgraph.errors import JobgraphError
from jobgraph.store import Store
from jobgraph.store.faults import StoreFault
from jobgraph.store.records import RunBusy
from jobgraph.web import api, auth, events, guard, metrics

if TYPE_CHECKING:
    from jobgraph.app.host import RunHost


def _page_routes() -> list[BaseRoute]:
    """The page's routes (jobgraph.web.pages), static files included."""
    try:
        pages = importlib.import_module("jobgraph.web.pages")
    except ModuleNotFoundError as exc:  # a build without the page (the API alone)
        if exc.name != "jobgraph.web.pages":
            raise
        return []
    found: list[BaseRoute] = pages.routes()
    return found


async def _error(request: Request, exc: Exception) -> Response:
    """jobgraph's errors as the API's JSON error with the status that fits it."""
    if isinstance(exc, queries.NotFound):
        return auth.error(404, str(exc))
    if isinstance(exc, queries.BadRequest):
        return auth.error(400, str(exc))
    if isinstance(exc, queries.Refused):
        return auth.error(403, str(exc))
    if isinstance(exc, StoreFault):
        return auth.error(503, str(exc))
    if isinstance(exc, RunBusy | JobgraphError):
        return auth.error(409, str(exc))
    raise exc


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such path, wrong method) in the API's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return auth.error(404, f"no such path: {request.url.path[:200]}")
    return auth.error(status, str(exc.detail) if isinstance(exc, HTTPException) else "internal error")


async def _crash(request: Request, exc: Exception) -> Response:
    """A bug's answer: the API's JSON error, no traceback (the server's log has it, for whoever runs it)."""
    response = auth.error(500, "internal error: the server's log says what went wrong")
    guard.add_headers(response.headers)  # sent from outside the middleware stack: the guard does not see it
    return response


def create_app(store_url: str, *, public: bool = False, host: RunHost | None = None,
               poll_secs: float = events.POLL_SECS, max_streams: int = events.MAX_STREAMS) -> Starlette:
    """The app over the store at `store_url`; `public` (bound off loopback) makes every read need a token."""
    records = Store(store_url)
    try:
        _ = records.engine  # connect SQLAlchemy now, in one thread: the request threads then share its pool
    except BaseException:
        records.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            records.close()

    routes: list[BaseRoute] = [
        *api.routes(),
        Route("/login", auth.login, methods=["POST"]),
        Route("/logout", auth.logout, methods=["POST"]),
        Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
        *_page_routes(),
        Route("/login", auth.login_form, methods=["GET"]),  # only if the page has no sign-in form of its own
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(guard.Guard),
                                Middleware(auth.AuthMiddleware, records=records, public=public)],
                    exception_handlers={JobgraphError: _error, HTTPException: _http_error, Exception: _crash})
    app.state.records = records
    app.state.metrics = metrics.registry_for(records)
    app.state.host = host
    app.state.public = public
    app.state.poll_secs = poll_secs
    app.state.streams = events.Streams(max_streams)
    app.state.store_lock = threading.Lock()
    return app
