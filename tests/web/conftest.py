"""Fixtures for the page's browser tests: one headless Debian Chromium per session, the page on a real server,
and stores made by the real `jobgraph` command (the seed's story) or recorded event by event (big, hostile runs).
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright
from starlette.applications import Starlette

from jobgraph.engine import AttemptEnded, AttemptStarted, Event, RunEnded, RunStarted, TaskChanged, TaskInfo
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from jobgraph.web import pages
from tests.conftest import SEED

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


def local_app(store_url: str) -> Starlette:
    """The page's routes over a store: the app factory's job until the API's branch is merged."""
    app = Starlette(routes=pages.routes())
    app.state.records = Store(store_url)
    return app


def start_server(store_url: str) -> tuple[Server, Callable[[], None]]:
    """Serve the page over a store on a free loopback port, in a thread; returns the server and how to stop it."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    config = uvicorn.Config(local_app(store_url), log_level="warning", lifespan="off")
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

    return Server(url=f"http://127.0.0.1:{listening.getsockname()[1]}", store_url=store_url), stop


@pytest.fixture
def serve() -> Iterator[Callable[[str], Server]]:
    """Start the page over a store (a factory); every server started is stopped after the test."""
    stops: list[Callable[[], None]] = []

    def start(store_url: str) -> Server:
        server, stop = start_server(store_url)
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


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seed]:
    """`jobgraph run` of the seed, then its failure simulation, as scripts/demo.sh walks through them; served."""
    folder = tmp_path_factory.mktemp("seed")
    for name in ("jobconfig.json", "pipeline.yaml"):
        shutil.copy(SEED / name, folder / name)
    jobgraph(folder, "run", "pipeline.yaml")
    with sqlite3.connect(folder / "results.db") as db:
        db.execute("""ALTER TABLE results_3 DROP COLUMN "'hello'" """)
        db.execute("ALTER TABLE results_3 ADD COLUMN createdate DATETIME")
    jobgraph(folder, "run", "pipeline.yaml", check=1)
    with Store(folder_store(folder)) as records:
        failed, succeeded = (run.run_id for run in records.runs(2))
    server, stop = start_server(folder_store(folder))
    yield Seed(folder=folder, server=server, succeeded=succeeded, failed=failed)
    stop()


def record_run(store_url: str, jobs: dict[str, tuple[str, ...]], states: dict[str, TaskState],
               errors: dict[str, str] | None = None, pipeline: str = "recorded") -> str:
    """A finished run written event by event as the engine writes one (no process runs): for runs too big or
    too odd to make with `jobgraph run` (5,000 jobs, names the config would refuse). Returns its id."""
    run_id = str(uuid.uuid4())
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    log = Path("/dev/null")
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
