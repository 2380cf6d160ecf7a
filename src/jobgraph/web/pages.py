"""The web page's routes: pipelines, runs, one run, its live parts, and the static files, rendered on the server.

Pages read the store (`request.app.state.records`) and render Jinja2 templates with autoescape on;
actions are not here: the page's buttons POST to the HTTP API with the CSRF header, so the page and
a script steer runs through the same checked path. Handlers are plain functions: Starlette runs them
in its thread pool, so reading a big run never stalls the event streams the server holds open.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, pass_context, select_autoescape
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from jobgraph.app import queries
from jobgraph.errors import StoreError
from jobgraph.selection import loaded, summary
from jobgraph.states import RunState
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from jobgraph.store.faults import StoreFault
from jobgraph.store.records import RunSummary
from jobgraph.web.auth import csrf_token, current_token
from jobgraph.web.run_view import ORDERS, run_view

RUNS_PAGE = 50

_templates = Jinja2Templates(env=Environment(
    loader=PackageLoader("jobgraph.web", "templates"), autoescape=select_autoescape(default=True),
    trim_blocks=True, lstrip_blocks=True))


def routes() -> list[BaseRoute]:
    """The page's routes, mounted by the app factory next to the API's."""
    return [
        Route("/", pipelines_page, name="pipelines"),
        Route("/runs", runs_page, name="runs"),
        Route("/runs/{run_id}", run_page, name="run"),
        Route("/runs/{run_id}/parts", run_parts, name="run_parts"),
        Route("/login", login_page, methods=["GET"], name="login"),
        Mount("/static", app=StaticFiles(packages=[("jobgraph.web", "static")]), name="static"),
    ]


def _when(value: datetime | str | None) -> str:
    """A time (or the API's ISO text of one) as the page shows it: UTC, to the second."""
    if value is None:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _between(started: datetime | str | None, finished: datetime | str | None) -> float | None:
    """Seconds between two times, or two of the API's ISO texts of them (None while the second is not there)."""
    if not started or not finished:
        return None
    begin = datetime.fromisoformat(started) if isinstance(started, str) else started
    end = datetime.fromisoformat(finished) if isinstance(finished, str) else finished
    return (end - begin).total_seconds()


def _took(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60)} s"


@pass_context
def _path_for(context: Any, name: str, /, **params: Any) -> str:
    """A route's path, never an absolute URL: a page's links and assets must not come from the request's Host
    header (anything, off loopback) or scheme (http behind a TLS proxy)."""
    request: Request = context["request"]
    return str(request.app.url_path_for(name, **params))


_templates.env.globals["url_for"] = _path_for
_templates.env.filters["when"] = _when
_templates.env.filters["took"] = _took
_templates.env.globals["between"] = _between
_templates.env.globals["chosen"] = lambda text: summary(loaded(text))  # a partial run, its cleared jobs


POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
          "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
"""The pages' Content-Security-Policy: only the package's own script and style run, even if markup slipped in."""


def _render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    """A template with what every page needs: the CSRF token for its buttons and who is signed in."""
    context.update(csrf=csrf_token(request), signed_in=current_token(request))
    return _templates.TemplateResponse(request, name, context, status_code=status, headers={
        "Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})


def _trouble(request: Request, exc: StoreFault) -> Response:
    """The store failed under the page (a database down, a damaged file): say so, as the CLI does, with 503."""
    return _render(request, "error.html", status=503, heading="The store cannot be read", message=str(exc))


def _records(request: Request) -> Store:
    records: Store = request.app.state.records
    return records


def pipelines_page(request: Request) -> Response:
    """Every deployed pipeline (state, schedule, last and next run), then pipelines only ever run by hand."""
    records = _records(request)
    try:
        deployed = Deployments(records).all()
        last: dict[str, RunSummary] = {}
        for run in records.runs(200):
            last.setdefault(run.pipeline, run)
        for pipeline in deployed:
            if pipeline.name not in last:
                found = records.runs(1, pipeline.name)
                if found:
                    last[pipeline.name] = found[0]
    except StoreFault as exc:
        return _trouble(request, exc)
    names = {pipeline.name for pipeline in deployed}
    by_hand = sorted(name for name in last if name not in names)
    return _render(request, "pipelines.html", deployed=deployed, last=last, by_hand=by_hand)


def runs_page(request: Request) -> Response:
    """Runs newest first, filtered by pipeline and state, one page at a time (the API's keyset cursor)."""
    params = request.query_params
    pipeline = params.get("pipeline") or None
    state = params.get("state") or None
    try:
        found, next_cursor = queries.run_page(_records(request), pipeline, state, RUNS_PAGE, params.get("cursor"))
    except queries.BadRequest as exc:
        return _render(request, "error.html", status=400, heading="Not a filter", message=str(exc))
    except StoreFault as exc:
        return _trouble(request, exc)
    return _render(request, "runs.html", runs=found, next_cursor=next_cursor, cursor=params.get("cursor"),
                   pipeline=pipeline or "",
                   state=state or "", states=list(RunState.__members__))


def _run_args(request: Request) -> tuple[str, int, str, str | None]:
    params = request.query_params
    order = params.get("order", "graph")
    try:
        page = int(params.get("page", "1"))
    except ValueError:
        page = 1
    return request.path_params["run_id"], page, order if order in ORDERS else "graph", params.get("job")


def run_page(request: Request) -> Response:
    """One run: its graph, the Gantt of its attempts, its jobs with their attempts, the log panel, the actions."""
    return _run_template(request, "run.html")


def run_parts(request: Request) -> Response:
    """The parts of the run page that change as it runs (graph, Gantt, jobs list), for the page's script."""
    return _run_template(request, "run_parts.html")


def _run_template(request: Request, template: str) -> Response:
    run_id, page, order, job = _run_args(request)
    try:
        view = run_view(_records(request), run_id, page, order, job)
    except StoreFault as exc:
        return _trouble(request, exc)
    except StoreError as exc:
        return _render(request, "error.html", status=404, heading="No such run", message=str(exc))
    return _render(request, template, view=view)


def login_page(request: Request) -> Response:
    """The sign-in form: a token pasted here is POSTed to /login, which keeps it in an HttpOnly cookie."""
    params = request.query_params
    return _render(request, "login.html", next=params.get("next", "/"), refused="refused" in params)  # POST checks
