"""The HTTP API's reads (/api/v1): pipelines, runs, one run, graphs, an attempt's log; JSON, times ISO-8601 UTC.

Every read is a plain function: Starlette runs it in its thread pool, so a slow query never holds
the event loop, and the store's SQLAlchemy pool gives each thread its own connection. What each
read returns is built by jobgraph.app.queries, which the web page uses too.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jobgraph.app import logs, queries
from jobgraph.store import Store
from jobgraph.web import actions, events, openapi

LARGEST = (1 << 62) - 1
"""No number a request gives may be bigger: each must fit the store's 64-bit integers and a file offset."""


def _records(request: Request) -> Store:
    records: Store = request.app.state.records
    return records


def _int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise queries.BadRequest(f"{name} must be a whole number, not {text[:40]!r}") from None
    if abs(value) > LARGEST:
        raise queries.BadRequest(f"{name} must be between {-LARGEST} and {LARGEST}, not {text[:40]}")
    return value


def list_pipelines(request: Request) -> Response:
    """GET /api/v1/pipelines."""
    return JSONResponse({"pipelines": queries.pipelines(_records(request))})


def get_pipeline(request: Request) -> Response:
    """GET /api/v1/pipelines/{name}."""
    return JSONResponse({"pipeline": queries.pipeline(_records(request), request.path_params["name"])})


def pipeline_graph(request: Request) -> Response:
    """GET /api/v1/pipelines/{name}/versions/{version}/graph."""
    params = request.path_params
    return JSONResponse(queries.pipeline_graph(_records(request), params["name"], params["version"]))


def list_runs(request: Request) -> Response:
    """GET /api/v1/runs?pipeline=&state=&limit=50&cursor=."""
    query = request.query_params
    listed, next_cursor = queries.run_page(_records(request), pipeline=query.get("pipeline") or None,
                                           state=query.get("state") or None, limit=_int(request, "limit", 50),
                                           cursor=query.get("cursor") or None)
    return JSONResponse({"runs": listed, "next_cursor": next_cursor})


def get_run(request: Request) -> Response:
    """GET /api/v1/runs/{run_id}."""
    return JSONResponse(queries.run_detail(_records(request), request.path_params["run_id"]))


def run_graph(request: Request) -> Response:
    """GET /api/v1/runs/{run_id}/graph."""
    return JSONResponse(queries.run_graph(_records(request), request.path_params["run_id"]))


def attempt_log(request: Request) -> Response:
    """GET /api/v1/runs/{run_id}/jobs/{job}/attempts/{attempt}/log?offset=0&limit=65536: text/plain."""
    params = request.path_params
    chunk = logs.read_log(_records(request), params["run_id"], params["job"], params["attempt"],
                             offset=_int(request, "offset", 0), limit=_int(request, "limit", 1 << 16))
    return Response(chunk.data, media_type="text/plain; charset=utf-8", headers={
        "X-Log-Next-Offset": str(chunk.next_offset), "X-Log-Complete": "true" if chunk.complete else "false",
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def health(request: Request) -> Response:
    """GET /healthz: the server answers (it reads nothing)."""
    return JSONResponse({"ok": True})


def describe(request: Request) -> Response:
    """GET /api/v1/openapi.json."""
    return JSONResponse(openapi.document())


def routes() -> list[BaseRoute]:
    """Every route of the API (the OpenAPI description lists exactly these; a test holds it to that)."""
    return [
        Route("/healthz", health, methods=["GET"]),
        Route("/api/v1/openapi.json", describe, methods=["GET"]),
        Route("/api/v1/pipelines", list_pipelines, methods=["GET"]),
        Route("/api/v1/pipelines/{name}", get_pipeline, methods=["GET"]),
        Route("/api/v1/pipelines/{name}/versions/{version}/graph", pipeline_graph, methods=["GET"]),
        Route("/api/v1/pipelines/{name}/trigger", actions.trigger, methods=["POST"]),
        Route("/api/v1/pipelines/{name}/suspend", actions.suspend, methods=["POST"]),
        Route("/api/v1/pipelines/{name}/resume", actions.resume, methods=["POST"]),
        Route("/api/v1/runs", list_runs, methods=["GET"]),
        Route("/api/v1/runs/{run_id}", get_run, methods=["GET"]),
        Route("/api/v1/runs/{run_id}/graph", run_graph, methods=["GET"]),
        Route("/api/v1/runs/{run_id}/events", events.events, methods=["GET"]),
        Route("/api/v1/runs/{run_id}/jobs/{job}/attempts/{attempt:int}/log", attempt_log, methods=["GET"]),
        Route("/api/v1/runs/{run_id}/cancel", actions.cancel, methods=["POST"]),
        Route("/api/v1/runs/{run_id}/retry", actions.retry, methods=["POST"]),
    ]
