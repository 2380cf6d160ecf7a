"""Every response carries its safety headers (no sniffing, no framing, no caching of what a token let someone read,
a CSP), whatever answered it; a bug answers JSON, not a traceback."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from jobgraph.app import queries
from jobgraph.store.tokens import Scope
from tests.web.conftest import bearer, call, get, make_token, served


def _check(response: httpx.Response, static: bool = False) -> None:
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("x-frame-options") == "DENY", where
    assert "frame-ancestors 'none'" in response.headers.get("content-security-policy", ""), where
    assert response.headers.get("referrer-policy") == "same-origin", where
    if not static:
        assert response.headers.get("cache-control") == "no-store", where
    if not response.headers.get("content-type", "").startswith("text/html"):
        assert "sandbox" in response.headers["content-security-policy"], where


def test_every_kind_of_response_has_the_safety_headers(ran: dict[str, Any]) -> None:
    run_id = ran["run_id"]

    async def work(client: httpx.AsyncClient) -> list[httpx.Response]:
        answers = [await client.get(path) for path in (
            "/", "/runs", f"/runs/{run_id}", f"/runs/{run_id}/parts", "/login", "/healthz", "/api/v1/openapi.json",
            "/api/v1/runs", f"/api/v1/runs/{run_id}", "/api/v1/runs/nope", "/no/such/path", "/runs/nope",
            f"/api/v1/runs/{run_id}/jobs/first/attempts/1/log", "/api/v1/runs?cursor=%00")]
        answers += [await client.post(f"/api/v1/runs/{run_id}/cancel"), await client.put("/api/v1/runs"),
                    await client.get("/api/v1/runs", headers={"host": "evil.example"})]
        async with client.stream("GET", f"/api/v1/runs/{run_id}/events") as stream:
            await stream.aread()
            answers.append(stream)
        return answers

    with served(ran["url"], poll_secs=0.01) as app:
        answers = call(app, work)
        static = call(app, lambda client: client.get("/static/jobgraph.js"))
    assert [a.status_code for a in answers] == [200] * 9 + [404] * 3 + [200, 400, 401, 401, 403, 200]
    for answer in answers:
        _check(answer)
    _check(static, static=True)
    assert static.status_code == 200 and "no-store" not in static.headers.get("cache-control", "")
    assert "script-src 'self'" in answers[0].headers["content-security-policy"]  # the pages keep their own policy


def test_a_bug_answers_json_500_and_no_traceback(ran: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug with /secret/path inside")

    monkeypatch.setattr(queries, "run_detail", broken)
    with served(ran["url"]) as app:

        async def main() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                return await client.get(f"/api/v1/runs/{ran['run_id']}")

        answer = asyncio.run(main())
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
    assert "internal error" in answer.json()["error"] and "/secret/path" not in answer.text
    _check(answer)


def test_pages_take_no_link_from_the_host_header(ran: dict[str, Any]) -> None:
    """Off loopback any Host reaches the server: a page's links and assets are paths, so a forged Host (or a TLS
    proxy's http) can point none of them elsewhere."""
    read = make_token(ran["url"], Scope.READ)
    with served(ran["url"], public=True) as app:
        for path in ("/", "/runs", f"/runs/{ran['run_id']}", "/login"):
            page = get(app, path, headers={"host": "evil.example", **bearer(read)})
            assert page.status_code == 200 and "evil.example" not in page.text, path
            assert 'src="/static/jobgraph.js"' in page.text and 'href="/static/jobgraph.css"' in page.text
