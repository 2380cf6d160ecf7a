"""The API in-process (httpx over ASGI, no socket), over stores that real `jobgraph` commands wrote."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette

from jobgraph.store import Store
from jobgraph.store.tokens import Scope, Tokens
from jobgraph.web.app import create_app
from tests.conftest import Cli, WritePipeline, sh, store_url

T = TypeVar("T")
SECRET = "hunter2-s3cr3t-value"
"""The value of the failing pipeline's secret: it must appear in no response."""


def call(app: Starlette, work: Callable[[httpx.AsyncClient], Awaitable[T]], base: str = "http://127.0.0.1") -> T:
    """Run `work` with a client talking to the app in-process, on a fresh event loop."""

    async def main() -> T:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as client:
            return await work(client)

    return asyncio.run(main())


def get(app: Starlette, path: str, **kwargs: Any) -> httpx.Response:
    """One request (GET unless `method=` says otherwise)."""
    method = kwargs.pop("method", "GET")
    return call(app, lambda client: client.request(method, path, **kwargs))


@contextlib.contextmanager
def served(url: str, **options: Any) -> Iterator[Starlette]:
    """The app over a store, its Store closed afterwards (httpx's ASGI transport runs no lifespan)."""
    app = create_app(url, **options)
    try:
        yield app
    finally:
        app.state.records.close()


def make_token(url: str, scope: Scope, name: str | None = None, expires: timedelta | None = None) -> str:
    """A token's secret, made straight in the store."""
    with Store(url) as records:
        secret, _ = Tokens(records).create(name or f"t-{scope.value}", scope, datetime.now(UTC), expires)
    return secret


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def ran(cli: Cli, write_pipeline: WritePipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A store with one failed run (a job that fails 3 times, printing a secret), deployed as `p`."""
    path = write_pipeline({
        "name": "p",
        "jobs": [sh("first", "echo hello; echo $TOKEN; printf return-%s \"$TOKEN\" > $JOBGRAPH_RETURN_VALUE_FILE",
                    secrets=["TOKEN"]),
                 sh("flaky", "echo attempt; echo $TOKEN >&2; exit 3", after=["first"], retries=2, retry_delay=0,
                    secrets=["TOKEN"]),
                 sh("later", "true", after=["flaky"])],
    })
    monkeypatch.setenv("TOKEN", SECRET)
    result = cli("run", str(path))
    cli("deploy", str(path), check=0)
    monkeypatch.delenv("TOKEN")
    assert result.returncode == 1, result.stdout + result.stderr
    url = store_url(tmp_path)
    with Store(url) as records:
        (run,) = records.runs(5)
    return {"url": url, "run_id": run.run_id, "path": path}
