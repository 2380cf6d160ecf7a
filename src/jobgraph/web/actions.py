"""The HTTP API's actions (POST): cancel, retry, trigger, suspend, resume; each calls jobgraph.app. Only retry
takes a body, and only optionally: `{"jobs": [...], "downstream": bool}` reruns those jobs (`retry --job`).

The auth middleware has already required an `operate` token (and, for a cookie, the CSRF header
and same origin). Cancel goes through the store (the run's owner, in whatever process, sees the
request and cancels as Ctrl-C does); retry and trigger start a run on this server's RunHost, on
its event loop; suspend and resume change the deployment. Each is recorded as done `by` the
token's name, so the store says who asked.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jobgraph.app import queries
from jobgraph.errors import JobgraphError
from jobgraph.store import Store
from jobgraph.web.auth import current_token

if TYPE_CHECKING:
    from jobgraph.app.host import RunHost


class NoHost(JobgraphError):
    """This server was started without a RunHost, so it cannot start runs (the API answers 409)."""


def _by(request: Request) -> str:
    token = current_token(request)
    return f"api token {token.name}" if token is not None else "api"


def _host(request: Request) -> RunHost:
    host: RunHost | None = request.app.state.host
    if host is None:
        raise NoHost("this server starts no runs (it was made without a RunHost); use `jobgraph web`")
    return host


def _locked(request: Request) -> threading.Lock:
    """One action at a time on the shared Store: its SQLite connection is not for two threads at once."""
    lock: threading.Lock = request.app.state.store_lock
    return lock


async def cancel(request: Request) -> Response:
    """POST /api/v1/runs/{run_id}/cancel: record a cancel request; 409 if the run is not running."""
    from jobgraph.app.cancel import cancel_run

    records: Store = request.app.state.records
    run_id = request.path_params["run_id"]

    def request_cancel() -> queries.Json:
        queries.run_signature(records, run_id)  # NotFound -> 404 before anything else
        with _locked(request):
            cancel_run(records, run_id, _by(request))
        run: queries.Json = queries.run_detail(records, run_id)["run"]
        return run

    return JSONResponse({"run": await run_in_threadpool(request_cancel)}, status_code=202)


MAX_RETRY_BODY = 1 << 16
"""The largest body a retry takes: a list of job names."""


async def _retry_choice(request: Request) -> tuple[list[str], bool]:
    """The jobs a retry's optional JSON body names and whether their dependents run again; BadRequest if malformed."""
    body = await request.body()
    if not body.strip():
        return [], False
    if len(body) > MAX_RETRY_BODY:
        raise queries.BadRequest(f"the body is over {MAX_RETRY_BODY} bytes")
    try:
        choice = json.loads(body)
    except ValueError:
        choice = None
    if not isinstance(choice, dict) or set(choice) - {"jobs", "downstream"}:
        raise queries.BadRequest('the body must be a JSON object {"jobs": [names], "downstream": true|false}')
    jobs, downstream = choice.get("jobs", []), choice.get("downstream", False)
    if not isinstance(jobs, list) or not all(isinstance(job, str) for job in jobs):
        raise queries.BadRequest('"jobs" must be a list of job names')
    if not isinstance(downstream, bool) or (downstream and not jobs):
        raise queries.BadRequest('"downstream" is true or false, and true only with "jobs"')
    return jobs, downstream


async def retry(request: Request) -> Response:
    """POST /api/v1/runs/{run_id}/retry: claim the run and run what did not succeed (or the jobs the body names,
    and with "downstream" what depends on them), on this server; 400 for a job that is not the run's."""
    from jobgraph.errors import ConfigError

    records: Store = request.app.state.records
    run_id = request.path_params["run_id"]
    jobs, downstream = await _retry_choice(request)
    await run_in_threadpool(queries.run_signature, records, run_id)  # NotFound -> 404
    try:
        started = await _host(request).start_retry(run_id, _by(request), jobs, downstream)
    except ConfigError as exc:
        raise queries.BadRequest(str(exc)) from None
    return JSONResponse({"run_id": started}, status_code=202)


async def trigger(request: Request) -> Response:
    """POST /api/v1/pipelines/{name}/trigger: the live scheduler service takes it, else this server runs it."""
    records: Store = request.app.state.records
    name = request.path_params["name"]
    deployed = await run_in_threadpool(queries.pipeline, records, name)  # NotFound -> 404
    outcome = await _host(request).start_trigger(deployed["name"], _by(request))
    return JSONResponse({"action": str(outcome.action), "run_id": outcome.run_id}, status_code=202)


async def suspend(request: Request) -> Response:
    """POST /api/v1/pipelines/{name}/suspend."""
    return await _change(request, suspending=True)


async def resume(request: Request) -> Response:
    """POST /api/v1/pipelines/{name}/resume."""
    return await _change(request, suspending=False)


async def _change(request: Request, suspending: bool) -> Response:
    from jobgraph.app import pipelines

    records: Store = request.app.state.records
    name = request.path_params["name"]

    def change() -> queries.Json:
        deployed = queries.pipeline(records, name)  # NotFound -> 404
        with _locked(request):
            (pipelines.suspend if suspending else pipelines.resume)(records, deployed["name"])
        return queries.pipeline(records, deployed["name"])

    return JSONResponse({"pipeline": await run_in_threadpool(change)})
