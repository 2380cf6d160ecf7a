"""Who may do what over HTTP: bearer tokens, cookie sign-in, CSRF and same-origin checks, all in one middleware.

The rules, checked before any endpoint runs:
- every action (any method but GET/HEAD/OPTIONS) needs a token of scope `operate`, even on loopback:
  any local process or web page could otherwise reach 127.0.0.1;
- a server bound off loopback (`public`) needs a `read` token for every read too (but /healthz,
  /login and static files);
- a token comes as `Authorization: Bearer jg_...`, or as the HttpOnly, SameSite=Strict cookie that
  POST /login sets; a request signed in by cookie must also send `X-Jobgraph-CSRF` equal to
  `csrf_token(request)` (an HMAC of the cookie's token, so only a page that could read the server's
  own HTML knows it) for any action;
- an action whose Origin is not this server's own is refused whatever it carries;
- on loopback the Host must be a loopback name, so a DNS-rebinding page cannot read through a
  victim's browser, and a request a reverse proxy forwarded (X-Forwarded-For, Forwarded) is refused:
  the proxy would hand the world a server that trusts its callers to be on this machine.
A token presented and not valid (unknown, revoked, expired) is refused (401), never taken as anonymous.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from jobgraph.store import Store
from jobgraph.store.faults import StoreFault
from jobgraph.store.tokens import Scope as TokenScope
from jobgraph.store.tokens import TokenInfo, Tokens, utcnow

COOKIE = "jobgraph_session"
CSRF_HEADER = "x-jobgraph-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = ("/healthz", "/login", "/static/", "/api/v1/openapi.json")
"""Reachable without a token even off loopback: nothing in them comes from the store."""
FORWARDED = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
"""Headers a reverse proxy adds: on a loopback-only server they mean the world may be reaching it through one."""
_AUTH_KEY = "jobgraph.auth"
MAX_FORM_BYTES = 4096
"""The most a sign-in form may send."""


@dataclass(frozen=True)
class Identity:
    """Who a request is: its token (None for anonymous) and whether it came by cookie (then CSRF applies)."""

    token: TokenInfo | None
    presented: str = ""
    by_cookie: bool = False


def current_token(request: Request) -> TokenInfo | None:
    """The token the request is signed in with (bearer or cookie), or None."""
    identity: Identity | None = request.scope.get(_AUTH_KEY)
    return None if identity is None else identity.token


def presented_token(request: Request) -> str:
    """The secret of the valid token the request signed in with ('' if none): for a stream to check it again later."""
    identity: Identity | None = request.scope.get(_AUTH_KEY)
    return "" if identity is None else identity.presented


def csrf_token(request: Request) -> str:
    """What a page signed in by cookie must send back in X-Jobgraph-CSRF; '' when not signed in by cookie."""
    identity: Identity | None = request.scope.get(_AUTH_KEY)
    if identity is None or not identity.by_cookie or identity.token is None:
        return ""
    return _csrf_for(identity.presented)


def _csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"jobgraph-csrf", hashlib.sha256).hexdigest()


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1), with or without brackets."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name part of a Host header (`[::1]:8787` -> `::1`, `localhost:80` -> `localhost`)."""
    return urlsplit(f"//{host_header}").hostname or ""


def error(status: int, message: str, **headers: str) -> JSONResponse:
    """The API's error body: {"error": message}; a lone surrogate the request's JSON spelled, and the message
    repeats, as its escape (`\\ud800`): UTF-8 has no way to send it."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class AuthMiddleware:
    """Applies the module's rules to every HTTP request, and records the request's Identity in its scope."""

    def __init__(self, app: ASGIApp, records: Store, public: bool) -> None:
        self.app = app
        self.tokens = Tokens(records)
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self._check(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        path: str = scope["path"]
        method: str = scope["method"]
        host = headers.get("host", "")
        if not self.public and not is_loopback(_host_name(host)):
            return error(403, f"this server answers only to loopback names, not Host {host[:100]!r}")
        if not self.public and any(name in headers for name in FORWARDED):
            return error(403, "a proxy forwards requests to this server, which listens on loopback only and so lets "
                              "anyone it serves read without a token; run `jobgraph web --host HOST` with tokens")
        if len(headers.getlist("authorization")) > 1:
            return error(400, "more than one Authorization header: send one")
        action = method not in SAFE_METHODS
        if action:
            origin = headers.get("origin")
            if origin is not None and origin != f"{scope.get('scheme', 'http')}://{host}":
                return error(403, f"cross-origin request refused (Origin {origin[:100]!r})")
        presented, by_cookie = _presented(headers)
        try:
            token = await run_in_threadpool(self.tokens.verify, presented, utcnow()) if presented else None
        except StoreFault as exc:  # the token cannot be checked: say why, as every endpoint does (not a 500)
            return error(503, str(exc))
        scope[_AUTH_KEY] = Identity(token, presented if token else "", by_cookie)
        if path in ("/login", "/logout"):
            return None
        if presented and token is None:
            return _refuse(401, "the token is unknown, revoked or expired", path, headers)
        open_path = any(path == p or (p.endswith("/") and path.startswith(p)) for p in OPEN_PATHS)
        needed = TokenScope.OPERATE if action else TokenScope.READ if self.public and not open_path else None
        if needed is None:
            return None
        if token is None:
            why = "this action needs a token" if action else "this server needs a token for every read"
            return _refuse(401, f"{why} (Authorization: Bearer jg_...; `jobgraph token create`)", path, headers)
        if not token.scope.allows(needed):
            return error(403, f"token {token.name!r} has scope {token.scope.value}; this needs {needed.value}")
        if action and by_cookie and not hmac.compare_digest(headers.get(CSRF_HEADER, ""), _csrf_for(presented)):
            return error(403, "missing or wrong X-Jobgraph-CSRF header (reload the page)")
        return None


def _presented(headers: Headers) -> tuple[str, bool]:
    """The token a request carries, and whether it came by cookie: the Authorization header wins."""
    authorization = headers.get("authorization", "")
    if authorization:
        kind, _, value = authorization.partition(" ")
        return (value.strip(), False) if kind.lower() == "bearer" else ("", False)
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value, True
    return "", False


def _refuse(status: int, message: str, path: str, headers: Headers) -> Response:
    """401 as JSON for the API and tools; a browser asking for a page is sent to /login instead."""
    if not path.startswith("/api/") and "text/html" in headers.get("accept", ""):
        return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
    return error(status, message, **{"WWW-Authenticate": 'Bearer realm="jobgraph"'})


async def login(request: Request) -> Response:
    """POST /login (form field `token`): check the token, then keep it in an HttpOnly, SameSite=Strict cookie."""
    form = await _form(request)
    if form is None:
        return error(413, f"the sign-in form is larger than {MAX_FORM_BYTES} bytes; send only the token")
    presented = form.get("token", "").strip()
    tokens: Tokens = Tokens(request.app.state.records)
    token = await run_in_threadpool(tokens.verify, presented, utcnow()) if presented else None
    target = form.get("next") or "/"
    if not target.startswith("/") or target.startswith("//") or "\\" in target or not target.isprintable():
        target = "/"  # only a path here: browsers read `//host`, `/\\host` and tabs or newlines in it as elsewhere
    if token is None:
        if "text/html" in request.headers.get("accept", ""):  # a browser's form: back to it, saying why
            return RedirectResponse(f"/login?refused=1&next={quote(target, safe='/')}", status_code=303)
        return error(401, "the token is unknown, revoked or expired")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, presented, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


async def _form(request: Request) -> dict[str, str] | None:
    """A small urlencoded form body (a sign-in form: no python-multipart needed), first value of each field;
    None if it is too large."""
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_FORM_BYTES:
            return None
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


async def logout(request: Request) -> Response:
    """POST /logout: forget the cookie."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


LOGIN_FORM = """<!doctype html><html><head><meta charset="utf-8"><title>jobgraph: sign in</title></head>
<body><form method="post" action="/login"><label>Token <input name="token" type="password" autocomplete="off">
</label><input type="hidden" name="next" value={next}><button>Sign in</button></form></body></html>"""


async def login_form(request: Request) -> Response:
    """GET /login when the page provides no form of its own: a bare one."""
    target = request.query_params.get("next", "/")
    return HTMLResponse(LOGIN_FORM.format(next=_attribute(target)))


def _attribute(value: str) -> str:
    """A value as a quoted HTML attribute, every quote and markup character escaped."""
    return '"' + html.escape(value, quote=True) + '"'
