"""Who is signed in, and the page's CSRF token: a stand-in until the web-api branch's auth is merged (theirs wins)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request


@dataclass(frozen=True)
class TokenInfo:
    """A signed-in token: its name and scope (read < operate < admin)."""

    name: str
    scope: str


def csrf_token(request: Request) -> str:
    """The value page actions send back in `X-Jobgraph-CSRF` (none yet: nobody can sign in without the API)."""
    return ""


def current_token(request: Request) -> TokenInfo | None:
    """The token the browser signed in with, if any (none yet: sign-in comes with the API)."""
    return None
