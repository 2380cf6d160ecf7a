"""Fixtures of the web tests: the API in-process (httpx over ASGI, no socket) over stores that real `jobgraph`
commands wrote; and for the page's browser tests, one headless Debian Chromium per session, the page on a
real server (`jobgraph web`, or uvicorn in a thread), and stores made by the real `jobgraph` command (the
seed's story) or recorded event by event (big, hostile runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright
from starlette.applications import Starlette

from jobgraph.engine import AttemptEnded, AttemptStarted, Event, RunEnded, RunStarted, TaskChanged, TaskInfo
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.tokens import Scope, Tokens
from jobgraph.web.app import create_app
from tests.conftest import SEED, Cli, WritePipeline, sh, store_url

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


# The page in a browser.

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def jobgraph(folder: Path, *args: str, check: int | None = 0, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `jobgraph` command in `folder`, with its store and logs there."""
    env = {**os.environ, "JOBGRAPH_HOME": str(folder / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    result = subprocess.run([sys.executable, "-m", "jobgraph", *args], cwd=folder, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


def folder_store(folder: Path) -> str:
    """The store `jobgraph` writes in `folder`."""
    return f"sqlite:///{folder / '.jobgraph' / 'jobgraph.db'}"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (never a downloaded browser)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `bash scripts/setup-browser.sh`"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookie of another test) and its page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    yield opened
    context.close()


@dataclass
class Server:
    """The page served by a real uvicorn server on a loopback port."""

    url: str
    store_url: str


def start_server(url: str) -> tuple[Server, Callable[[], None]]:
    """Serve the page over a store on a free loopback port, in a thread; returns the server and how to stop it."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(url), log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the web server did not start"
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        listening.close()

    return Server(url=f"http://127.0.0.1:{listening.getsockname()[1]}", store_url=url), stop


@pytest.fixture
def serve() -> Iterator[Callable[[str], Server]]:
    """Start the page over a store (a factory); every server started is stopped after the test."""
    stops: list[Callable[[], None]] = []

    def start(url: str) -> Server:
        server, stop = start_server(url)
        stops.append(stop)
        return server

    yield start
    for stop in stops:
        stop()


@dataclass
class Seed:
    """The seed's story in one store: a run that succeeded, then the run where t_myjob_3 failed 3 times."""

    folder: Path
    server: Server
    succeeded: str
    failed: str


def seed_story(folder: Path) -> tuple[str, str]:
    """Run the seed in `folder`, then its failure simulation, as scripts/demo.sh does: (failed, succeeded) run ids."""
    for name in ("jobconfig.json", "pipeline.yaml"):
        shutil.copy(SEED / name, folder / name)
    jobgraph(folder, "run", "pipeline.yaml")
    with sqlite3.connect(folder / "results.db") as db:
        db.execute("""ALTER TABLE results_3 DROP COLUMN "'hello'" """)
        db.execute("ALTER TABLE results_3 ADD COLUMN createdate DATETIME")
    jobgraph(folder, "run", "pipeline.yaml", check=1)
    with Store(folder_store(folder)) as records:
        failed, succeeded = (run.run_id for run in records.runs(2))
    return failed, succeeded


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seed]:
    """`jobgraph run` of the seed, then its failure simulation, as scripts/demo.sh walks through them; served."""
    folder = tmp_path_factory.mktemp("seed")
    failed, succeeded = seed_story(folder)
    server, stop = start_server(folder_store(folder))
    yield Seed(folder=folder, server=server, succeeded=succeeded, failed=failed)
    stop()


def record_run(store_url: str, jobs: dict[str, tuple[str, ...]], states: dict[str, TaskState],
               errors: dict[str, str] | None = None, pipeline: str = "recorded", log: Path = Path("/dev/null")) -> str:
    """A finished run written event by event as the engine writes one (no process runs): for runs too big or
    too odd to make with `jobgraph run` (5,000 jobs, names the config would refuse); every attempt's log is
    `log`. Returns its id."""
    run_id = str(uuid.uuid4())
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    events: list[Event] = [RunStarted(
        run_id=run_id, pipeline=pipeline, at=start, scheduled_time=start, snapshot="{}",
        tasks=tuple(TaskInfo(name=name, pool="default", image="sh", predecessors=after)
                    for name, after in jobs.items()))]
    for index, name in enumerate(jobs):
        state = states.get(name, TaskState.SUCCEEDED)
        if state in (TaskState.SKIPPED, TaskState.PENDING):
            if state == TaskState.SKIPPED:
                events.append(TaskChanged(run_id=run_id, task=name, state=state, at=start, reason="predecessor failed"))
            continue
        began = start + timedelta(milliseconds=index % 500 * 20)
        ended = began + timedelta(seconds=1)
        status = AttemptStatus.DONE if state == TaskState.SUCCEEDED else AttemptStatus.FAILED
        error = (errors or {}).get(name) if status == AttemptStatus.FAILED else None
        events += [
            TaskChanged(run_id=run_id, task=name, state=TaskState.RUNNING, at=began, attempt=1),
            AttemptStarted(run_id=run_id, task=name, attempt=1, at=began, log_path=log),
            AttemptEnded(run_id=run_id, task=name, attempt=1, status=status, started_at=began, at=ended,
                         exit_code=0 if status == AttemptStatus.DONE else 1, error=error, log_path=log),
            TaskChanged(run_id=run_id, task=name, state=state, at=ended, attempt=1, reason=error),
        ]
    failed = any(state != TaskState.SUCCEEDED for state in states.values())
    events.append(RunEnded(run_id=run_id, state=RunState.FAILED if failed else RunState.SUCCEEDED,
                           at=start + timedelta(seconds=12)))
    with Store(store_url) as records:
        records.record_all(events)
    return run_id


@dataclass
class WebProcess:
    """A real `jobgraph web` process over a folder's store."""

    url: str
    process: subprocess.Popen[str]


@pytest.fixture
def jobgraph_web() -> Iterator[Callable[[Path], WebProcess]]:
    """Start `jobgraph web` on a free loopback port over the store of a folder (a factory); stopped afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(folder: Path) -> WebProcess:
        env = {**os.environ, "JOBGRAPH_HOME": str(folder / ".jobgraph")}
        env.pop("JOBGRAPH_STORE", None)
        process = subprocess.Popen([sys.executable, "-m", "jobgraph", "web", "--port", "0", "--store",
                                    folder_store(folder)], cwd=folder, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert found, f"jobgraph web did not say where it listens: {line!r}"
        return WebProcess(url=found.group(0), process=process)

    yield start
    for process in started:
        process.terminate()
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
