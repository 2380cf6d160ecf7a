"""The page and the API when the store fails under them, and what they may show of the store's URL: over a real
server (uvicorn in a thread), so it runs whatever event loop the browser tests hold in the main thread."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from jobgraph.store.tokens import Scope
from tests.web.conftest import Server, make_token

PASSWORD = "Sup3r-s3cret-pw"


def test_a_store_gone_under_the_server_is_503_and_its_password_is_shown_nowhere(
        postgres_server: str, serve: Callable[[str], Server]) -> None:
    name = f"t_down_{os.getpid()}"
    admin = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{postgres_server}/{name}".replace("postgres@", f"postgres:{PASSWORD}@")  # trust auth ignores it
    try:
        token = make_token(url, Scope.OPERATE)
        server = serve(url)

        def get(path: str, **options: Any) -> httpx.Response:
            return httpx.get(server.url + path, timeout=30, **options)

        missing = get("/runs/0000dead", headers={"accept": "text/html"})
        assert missing.status_code == 404 and "no run with id &#39;0000dead&#39;" in missing.text
        assert "postgres:***@" in missing.text and PASSWORD not in missing.text
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        for path in ("/", "/runs", "/runs/0000dead"):
            page = get(path, headers={"accept": "text/html"})
            assert page.status_code == 503, (path, page.text)
            assert page.headers["content-type"].startswith("text/html")
            assert "The store cannot be read" in page.text and "postgres:***@" in page.text
            assert PASSWORD not in page.text
        for path in ("/api/v1/runs", "/api/v1/pipelines", "/api/v1/runs/0000dead", "/metrics"):
            answer = get(path)
            assert answer.status_code == 503 and "store" in answer.json()["error"], path
            assert PASSWORD not in answer.text
        for method in ("GET", "POST"):  # a token that cannot be checked: the same 503, not a crash
            answer = httpx.request(method, f"{server.url}/api/v1/runs/0000dead/cancel" if method == "POST" else
                                   f"{server.url}/api/v1/runs", headers={"authorization": f"Bearer {token}"},
                                   timeout=30)
            assert answer.status_code == 503 and "store" in answer.json()["error"], (method, answer.text)
            assert PASSWORD not in answer.text
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
