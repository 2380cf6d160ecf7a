"""Hostile requests to every route, on both backends: each gets a JSON error (or the page's error) with a 4xx status,
never a 500 or a traceback, and changes nothing."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from sqlalchemy import create_engine, text
from starlette.applications import Starlette

from jobgraph.states import TaskState
from jobgraph.store.tokens import Scope
from tests.web.conftest import bearer, make_token, record_run, served


def _cursor(*values: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def _requests(run_id: str) -> list[tuple[str, str]]:
    log = f"/api/v1/runs/{run_id}/jobs/a/attempts"
    return [
        ("GET", f"{log}/99999999999999999999/log"), ("GET", f"{log}/9223372036854775808/log"),
        ("GET", f"{log}/1/log?offset=-99999999999999999999999"), ("GET", f"{log}/1/log?limit=99999999999999999999"),
        ("GET", "/api/v1/runs/%00"), ("GET", "/api/v1/runs/a%00b/graph"), ("GET", "/api/v1/runs/%00/events"),
        ("GET", f"/api/v1/runs/{run_id}/jobs/%00/attempts/1/log"),
        ("GET", "/api/v1/runs?pipeline=%00"), ("GET", "/api/v1/runs?state=%00"),
        ("GET", "/api/v1/runs?limit=99999999999999999999"),
        ("GET", f"/api/v1/runs?cursor={_cursor('9999-12-31T23:59:59-14:00', 'x')}"),
        ("GET", f"/api/v1/runs?cursor={_cursor('0001-01-01T00:00:00+14:00', 'x')}"),
        ("GET", "/api/v1/runs?cursor=" + _cursor("2030-01-01T00:00:00Z", "a\u0000b")),
        ("GET", f"/api/v1/runs?cursor={_cursor('2030-01-01T00:00:00Z', 'a', 'b')}"),
        ("GET", f"/api/v1/runs?cursor={_cursor(1, 2)}"), ("GET", "/api/v1/runs?cursor=%00"),
        ("GET", "/api/v1/pipelines/%00"), ("GET", "/api/v1/pipelines/p%00/versions/%00/graph"),
        ("GET", "/runs/%00"), ("GET", "/runs/%00/parts"), ("GET", "/runs?pipeline=%00"),
        ("GET", f"/runs?cursor={_cursor('9999-12-31T23:59:59-14:00', 'x')}"),
        ("POST", "/api/v1/runs/%00/cancel"), ("POST", "/api/v1/runs/%00/retry"),
        ("POST", "/api/v1/pipelines/%00/trigger"), ("POST", "/api/v1/pipelines/%00/suspend"),
    ]


def _send(app: Starlette, requests: list[tuple[str, str]], token: str) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return [await client.request(method, path, headers=bearer(token)) for method, path in requests]

    return asyncio.run(main())


def test_hostile_parameters_get_a_clear_4xx_never_a_500(any_store_url: str, capfd: pytest.CaptureFixture[str]) -> None:
    run_id = record_run(any_store_url, {"a": ()}, {"a": TaskState.FAILED})
    token = make_token(any_store_url, Scope.OPERATE)
    with served(any_store_url) as app:
        answers = _send(app, _requests(run_id), token)
    wrong = [(method, path, answer.status_code, answer.text[:120])
             for (method, path), answer in zip(_requests(run_id), answers, strict=True)
             if not 400 <= answer.status_code < 500]
    assert wrong == [], "\n".join(map(str, wrong))
    for answer in answers:
        if answer.headers["content-type"].startswith("application/json"):
            assert answer.json()["error"]
        else:
            assert answer.headers["content-type"].startswith("text/html") and "Traceback" not in answer.text
    assert "Traceback" not in capfd.readouterr().err


def test_no_answer_shows_the_stores_password(postgres_server: str) -> None:
    """The store's URL may carry a password: no error, page or response names the store with it."""
    name = f"t_pw_web_{abs(hash(postgres_server)) % 10**6}"
    admin = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = postgres_server.replace("postgres@", "postgres:pw-S3CRET-9@") + f"/{name}"  # trust auth: any password
    run_id = record_run(url, {"a": ()}, {"a": TaskState.FAILED})
    token = make_token(url, Scope.OPERATE)
    paths = ["/runs/nope", "/runs/nope/parts", "/api/v1/runs/nope", "/api/v1/runs/nope/graph",
             "/api/v1/pipelines/nope", f"/runs/{run_id}", "/", "/runs", "/api/v1/runs/nope/events",
             f"/api/v1/runs/{run_id}/jobs/b/attempts/1/log"]
    with served(url) as app:
        answers = _send(app, [("GET", path) for path in paths] + [("POST", "/api/v1/runs/nope/cancel")], token)
    assert [answer.status_code for answer in answers] == [404] * 5 + [200] * 3 + [404] * 3
    assert not [answer.text for answer in answers if "pw-S3CRET-9" in answer.text]
