"""The OpenAPI 3 description of /api/v1, written by hand (tests/web/test_openapi.py holds it to the real routes)."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

_TIME = {"type": "string", "format": "date-time", "nullable": True}
_TEXT = {"type": "string", "nullable": True}
_INT = {"type": "integer", "nullable": True}
_NUMBER = {"type": "number", "nullable": True}


def _object(**properties: Any) -> Json:
    return {"type": "object", "properties": properties, "required": sorted(properties)}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


_SCHEMAS: Json = {
    "Error": _object(error={"type": "string"}),
    "Pipeline": _object(
        name={"type": "string"}, state={"type": "string", "enum": ["ACTIVE", "SUSPENDED"]},
        version={"type": "string"}, schedule=_TEXT, next_fire_at=_TIME,
        last_run={"nullable": True, **_object(run_id={"type": "string"}, state={"type": "string"},
                                              started_at=_TIME)}),
    "RunSummary": _object(
        run_id={"type": "string"}, pipeline={"type": "string"}, state={"type": "string"},
        run_attempt={"type": "integer"}, started_at=_TIME, finished_at=_TIME, trigger=_TEXT, version=_TEXT,
        selection={"type": "object", "nullable": True, "description": "A partial run's choice (only, from, until, "
                   "jobs) and its targeted retries (retries); null for a whole run"},
        job_counts={"type": "object", "additionalProperties": {"type": "integer"}}),
    "Run": {"allOf": [_ref("RunSummary"), _object(scheduled_time=_TIME, owner=_TEXT, cancel_requested_at=_TIME)]},
    "Job": _object(name={"type": "string"}, state={"type": "string"}, attempts={"type": "integer"},
                   started_at=_TIME, finished_at=_TIME, duration_secs=_NUMBER, return_value=_TEXT, error=_TEXT),
    "Attempt": _object(job={"type": "string"}, attempt={"type": "integer"}, run_attempt={"type": "integer"},
                       status={"type": "string"}, exit_code=_INT, error=_TEXT, started_at=_TIME,
                       finished_at=_TIME, duration_secs=_NUMBER, runner=_TEXT),
    "Notification": _object(event={"type": "string", "enum": ["run_failed", "run_succeeded", "job_failed"]},
                            job=_TEXT, target={"type": "string"}, state={"type": "string", "enum": ["SENT", "FAILED"]},
                            tries={"type": "integer"}, error=_TEXT, created_at=_TIME, finished_at=_TIME),
    "RunDetail": _object(run=_ref("Run"), jobs={"type": "array", "items": _ref("Job")},
                         attempts={"type": "array", "items": _ref("Attempt")},
                         notifications={"type": "array", "items": _ref("Notification")}),
    "Graph": _object(jobs={"type": "array", "items": _object(
        name={"type": "string"}, after={"type": "array", "items": {"type": "string"}}, runner=_TEXT, pool=_TEXT,
        image=_TEXT, finalizer={"type": "boolean"})}),
}


def _json(schema: Json, description: str = "OK") -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {str(code): _json(_ref("Error"), text) for code, text in (
    (400, "A malformed parameter"), (401, "No token, or one unknown, revoked or expired"),
    (403, "Not allowed: scope, CSRF, origin, or a log that is not a regular file"), (404, "Not found"))}
_ACTION_ERRORS = {**_ERRORS, "409": _json(_ref("Error"), "Not possible now (e.g. the run is not running)")}


def _param(name: str, where: str = "path", kind: str = "string", **extra: Any) -> Json:
    return {"name": name, "in": where, "required": where == "path", "schema": {"type": kind, **extra}}


def _get(summary: str, ok: Json, *params: Json) -> Json:
    return {"get": {"summary": summary, "parameters": list(params), "responses": {"200": ok, **_ERRORS}}}


def _post(summary: str, ok: Json, *params: Json, status: str = "202") -> Json:
    return {"post": {"summary": summary, "parameters": list(params), "security": [{"bearer": []}, {"cookie": []}],
                     "responses": {status: ok, **_ACTION_ERRORS}}}


_RUN, _NAME = _param("run_id"), _param("name")


def document() -> Json:
    """The description served at /api/v1/openapi.json."""
    pipeline_body = _json(_object(pipeline=_ref("Pipeline")))
    return {
        "openapi": "3.0.3",
        "info": {"title": "jobgraph", "version": "1",
                 "description": "Pipelines, runs, jobs, attempts and logs of a jobgraph store; actions on them. "
                 "Actions need a token of scope operate (Authorization: Bearer jg_...); off loopback every "
                 "read needs a read token. A cookie session (POST /login) must send X-Jobgraph-CSRF."},
        "components": {"schemas": _SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "jobgraph_session"}}},
        "paths": {
            "/healthz": _get("The server answers", _json(_object(ok={"type": "boolean"}))),
            "/api/v1/openapi.json": _get("This description", _json({"type": "object"})),
            "/api/v1/pipelines": _get("Deployed pipelines", _json(_object(
                pipelines={"type": "array", "items": _ref("Pipeline")}))),
            "/api/v1/pipelines/{name}": _get("One deployed pipeline", pipeline_body, _NAME),
            "/api/v1/pipelines/{name}/versions/{version}/graph": _get(
                "The graph of a pipeline version", _json(_ref("Graph")), _NAME, _param("version")),
            "/api/v1/pipelines/{name}/trigger": _post("Run the pipeline now", _json(_object(
                action={"type": "string", "enum": ["STARTED", "QUEUED", "SKIPPED"]}, run_id=_TEXT)), _NAME),
            "/api/v1/pipelines/{name}/suspend": _post("Stop scheduling it", pipeline_body, _NAME, status="200"),
            "/api/v1/pipelines/{name}/resume": _post("Schedule it again", pipeline_body, _NAME, status="200"),
            "/api/v1/runs": _get("Runs, newest first, a page at a time", _json(_object(
                runs={"type": "array", "items": _ref("RunSummary")}, next_cursor=_TEXT)),
                _param("pipeline", "query"), _param("state", "query"),
                _param("limit", "query", "integer", minimum=1, maximum=500, default=50), _param("cursor", "query")),
            "/api/v1/runs/{run_id}": _get("One run with its jobs and attempts", _json(_ref("RunDetail")), _RUN),
            "/api/v1/runs/{run_id}/graph": _get("The graph the run ran", _json(_ref("Graph")), _RUN),
            "/api/v1/runs/{run_id}/events": _get(
                "The run's changes as Server-Sent Events: snapshot, change..., end "
                "(or refused, once the token it was opened with is revoked)",
                {"description": "OK", "content": {"text/event-stream": {"schema": {"type": "string"}}}}, _RUN),
            "/api/v1/runs/{run_id}/jobs/{job}/attempts/{attempt}/log": _get(
                "Part of an attempt's log (headers X-Log-Next-Offset, X-Log-Complete)",
                {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
                _RUN, _param("job"), _param("attempt", kind="integer"),
                _param("offset", "query", "integer", default=0, description="negative: from the end (the tail)"),
                _param("limit", "query", "integer", minimum=1, maximum=1 << 20, default=1 << 16)),
            "/api/v1/runs/{run_id}/cancel": _post("Ask the run's owner to cancel it", _json(_object(
                run=_ref("Run"))), _RUN),
            "/api/v1/runs/{run_id}/retry": {"post": {
                **_post("Run again what did not succeed, or the jobs named (and what depends on them)", _json(
                    _object(run_id={"type": "string"})), _RUN)["post"],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "jobs": {"type": "array", "items": {"type": "string"}},
                        "downstream": {"type": "boolean", "default": False}}}}}}}},
        },
    }
