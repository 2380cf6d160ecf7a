"""Who may do what: tokens and scopes, loopback and public, cookie sign-in with CSRF, origins, hosts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from jobgraph.store import Store
from jobgraph.store.tokens import Scope, Tokens
from jobgraph.web.auth import csrf_token, current_token
from tests.web.conftest import bearer, call, get, make_token, served

ACTIONS = ["/api/v1/runs/{run}/cancel", "/api/v1/runs/{run}/retry", "/api/v1/pipelines/p/trigger",
           "/api/v1/pipelines/p/suspend", "/api/v1/pipelines/p/resume"]


def _paths(run_id: str) -> list[str]:
    return [path.format(run=run_id) for path in ACTIONS]


def _deployed_state(url: str) -> str:
    from jobgraph.store.deployments import Deployments

    with Store(url) as records:
        return Deployments(records).get("p").state


def test_every_action_needs_an_operate_token_even_on_loopback(ran: dict[str, Any]) -> None:
    read, operate = make_token(ran["url"], Scope.READ), make_token(ran["url"], Scope.OPERATE)
    with served(ran["url"]) as app:
        for path in _paths(ran["run_id"]):
            anonymous = get(app, path, method="POST")
            assert anonymous.status_code == 401 and "needs a token" in anonymous.json()["error"], path
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            reader = get(app, path, method="POST", headers=bearer(read))
            assert reader.status_code == 403 and "scope read" in reader.json()["error"], path
        assert _deployed_state(ran["url"]) == "ACTIVE"  # nothing refused did anything
        assert get(app, "/api/v1/runs").status_code == 200  # loopback reads need no token
        allowed = get(app, "/api/v1/pipelines/p/suspend", method="POST", headers=bearer(operate))
        assert allowed.status_code == 200 and allowed.json()["pipeline"]["state"] == "SUSPENDED"
    assert _deployed_state(ran["url"]) == "SUSPENDED"


def test_revoked_expired_and_unknown_tokens_are_refused(ran: dict[str, Any]) -> None:
    url = ran["url"]
    revoked = make_token(url, Scope.ADMIN, "old")
    expired = make_token(url, Scope.ADMIN, "brief", expires=timedelta(days=1))
    with Store(url) as records:
        tokens = Tokens(records)
        tokens.revoke("old", datetime.now(UTC))
        assert tokens.verify(expired, datetime.now(UTC) + timedelta(days=2)) is None
    with Store(url) as records, records.engine.begin() as conn:  # expire it for real, a day ago
        from sqlalchemy import update

        from jobgraph.store.tables import api_tokens

        conn.execute(update(api_tokens).where(api_tokens.c.name == "brief").values(
            expires_at=datetime.now(UTC) - timedelta(days=1)))
    with served(url) as app:
        for token in (revoked, expired, "jg_" + "x" * 43, "nonsense"):
            for method, path in (("POST", "/api/v1/pipelines/p/suspend"), ("GET", "/api/v1/runs")):
                refused = get(app, path, method=method, headers=bearer(token))
                assert refused.status_code == 401 and "unknown, revoked or expired" in refused.json()["error"]
    assert _deployed_state(url) == "ACTIVE"


def test_off_loopback_every_read_needs_a_token(ran: dict[str, Any]) -> None:
    read = make_token(ran["url"], Scope.READ)
    with served(ran["url"], public=True) as app:
        for path in ("/api/v1/runs", f"/api/v1/runs/{ran['run_id']}", "/api/v1/pipelines",
                     f"/api/v1/runs/{ran['run_id']}/jobs/first/attempts/1/log", f"/api/v1/runs/{ran['run_id']}/events"):
            refused = get(app, path, headers={"host": "jobs.example.com"})
            assert refused.status_code == 401 and "needs a token for every read" in refused.json()["error"], path
            assert "hello" not in refused.text
        assert get(app, "/api/v1/runs", headers={"host": "jobs.example.com", **bearer(read)}).status_code == 200
        assert get(app, "/healthz", headers={"host": "jobs.example.com"}).json() == {"ok": True}
        page = get(app, "/runs", headers={"host": "jobs.example.com", "accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/runs"


def test_on_loopback_a_foreign_host_name_is_refused(ran: dict[str, Any]) -> None:
    """A DNS-rebinding page (evil.example resolving to 127.0.0.1) cannot read through the user's browser."""
    with served(ran["url"]) as app:
        refused = get(app, "/api/v1/runs", headers={"host": "evil.example:8787"})
        assert refused.status_code == 403 and "loopback" in refused.json()["error"]
        for host in ("localhost:8787", "127.0.0.1", "[::1]:8787"):
            assert get(app, "/api/v1/runs", headers={"host": host}).status_code == 200, host


def _with_probe(app: Any) -> None:
    """A route that shows what templates get: the CSRF token and who is signed in."""

    def probe(request: Request) -> PlainTextResponse:
        token = current_token(request)
        return PlainTextResponse(f"{csrf_token(request)} {token.name if token else '-'}")

    app.router.routes.insert(0, Route("/probe", probe))


def test_cookie_sign_in_needs_the_csrf_header_for_actions(ran: dict[str, Any]) -> None:
    operate = make_token(ran["url"], Scope.OPERATE, "alice")
    with served(ran["url"]) as app:
        _with_probe(app)

        async def work(client: httpx.AsyncClient) -> None:
            wrong = await client.post("/login", data={"token": "jg_wrong"})
            assert wrong.status_code == 401 and "jobgraph_session" not in wrong.headers.get("set-cookie", "")
            signed = await client.post("/login", data={"token": operate, "next": "/runs"})
            assert signed.status_code == 303 and signed.headers["location"] == "/runs"
            cookie = signed.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie and operate.lower() in cookie
            csrf, who = (await client.get("/probe")).text.split()
            assert who == "alice" and len(csrf) == 64
            no_header = await client.post("/api/v1/pipelines/p/suspend")
            assert no_header.status_code == 403 and "X-Jobgraph-CSRF" in no_header.json()["error"]
            bad = await client.post("/api/v1/pipelines/p/suspend", headers={"X-Jobgraph-CSRF": "0" * 64})
            assert bad.status_code == 403
            assert _deployed_state(ran["url"]) == "ACTIVE"
            good = await client.post("/api/v1/pipelines/p/suspend", headers={"X-Jobgraph-CSRF": csrf})
            assert good.status_code == 200 and _deployed_state(ran["url"]) == "SUSPENDED"
            await client.post("/logout")
            assert (await client.get("/probe")).text == " -"

        call(app, work)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999"])
def test_a_cross_origin_action_is_refused_whatever_it_carries(ran: dict[str, Any], origin: str) -> None:
    operate = make_token(ran["url"], Scope.OPERATE)
    with served(ran["url"]) as app:
        refused = get(app, "/api/v1/pipelines/p/suspend", method="POST", headers={"origin": origin, **bearer(operate)})
        assert refused.status_code == 403 and "cross-origin" in refused.json()["error"]
        signin = get(app, "/login", method="POST", data={"token": operate}, headers={"origin": origin})
        assert signin.status_code == 403 and "set-cookie" not in signin.headers
        same = get(app, "/api/v1/pipelines/p/suspend", method="POST",
                   headers={"origin": "http://127.0.0.1", **bearer(operate)})
        assert same.status_code == 200
    assert _deployed_state(ran["url"]) == "SUSPENDED"


def test_the_login_form_escapes_its_next_parameter(ran: dict[str, Any]) -> None:
    with served(ran["url"]) as app:
        form = get(app, "/login", params={"next": '"><script>alert(1)</script>'})
    assert form.status_code == 200 and "<script>alert" not in form.text and "&lt;script&gt;" in form.text


@pytest.mark.parametrize("forwarded", [{"x-forwarded-for": "203.0.113.9"}, {"forwarded": "for=203.0.113.9"},
                                       {"x-real-ip": "203.0.113.9"}, {"x-forwarded-host": "jobs.example.com"}])
def test_a_loopback_server_refuses_what_a_reverse_proxy_forwards(ran: dict[str, Any],
                                                                 forwarded: dict[str, str]) -> None:
    """A proxy in front of a loopback server (Apache's and nginx's defaults send Host: 127.0.0.1:PORT) would hand
    the world a server that lets anyone read without a token: the proxy's own headers give it away."""
    read = make_token(ran["url"], Scope.READ)
    with served(ran["url"]) as app:
        run = f"/api/v1/runs/{ran['run_id']}"
        for path in ("/api/v1/runs", f"/runs/{ran['run_id']}", f"{run}/jobs/first/attempts/1/log"):
            refused = get(app, path, headers={"host": "127.0.0.1:8787", **forwarded})
            assert refused.status_code == 403 and "--host" in refused.json()["error"], path
            assert "hello" not in refused.text and "first" not in refused.text
    with served(ran["url"], public=True) as app:  # a server meant to be public takes a proxy: tokens guard it
        assert get(app, "/api/v1/runs", headers={"host": "jobs.example.com", **forwarded}).status_code == 401
        answer = get(app, "/api/v1/runs", headers={"host": "jobs.example.com", **forwarded, **bearer(read)})
        assert answer.status_code == 200 and answer.json()["runs"][0]["run_id"] == ran["run_id"]


def test_two_authorization_headers_and_an_oversized_sign_in_are_refused(ran: dict[str, Any]) -> None:
    """A request whose credentials two parts of a chain could read differently is refused, not guessed at."""
    operate = make_token(ran["url"], Scope.OPERATE)
    with served(ran["url"]) as app:
        for pair in ([f"Bearer {operate}", "Bearer jg_other"], ["Bearer jg_other", f"Bearer {operate}"]):
            two = get(app, "/api/v1/pipelines/p/suspend", method="POST",
                      headers=[("authorization", pair[0]), ("authorization", pair[1])])
            assert two.status_code == 400 and "more than one Authorization" in two.json()["error"]
        huge = get(app, "/login", method="POST", data={"token": operate, "next": "/" + "x" * 5000})
        assert huge.status_code == 413 and "larger than 4096 bytes" in huge.json()["error"]
        assert "set-cookie" not in huge.headers
    assert _deployed_state(ran["url"]) == "ACTIVE"


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil.example", "/\\/evil.example", "https://evil.example",
                                    "/\t/evil.example", " //evil.example", "javascript:alert(1)", "/%2f%2fevil.example",
                                    "/runs\r\nSet-Cookie: x=1", "\\\\evil.example"])
def test_sign_in_never_redirects_off_the_server(ran: dict[str, Any], target: str) -> None:
    """`next` after sign-in is a path on this server, however a browser would read what it is given."""
    operate = make_token(ran["url"], Scope.OPERATE)
    with served(ran["url"]) as app:
        signed = get(app, "/login", method="POST", data={"token": operate, "next": target})
    location = signed.headers["location"]
    assert signed.status_code == 303 and "\r" not in location and "\n" not in location
    for read_as in (location, location.replace("\\", "/")):  # browsers take a backslash for a slash
        assert urlsplit(urljoin("http://127.0.0.1:8787/login", read_as)).netloc == "127.0.0.1:8787", location
