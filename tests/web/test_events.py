"""The run's event stream: what another process writes arrives as changes, then `end`; a client that leaves
leaves nothing running behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, update
from starlette.applications import Starlette

from jobgraph.app import queries
from jobgraph.store import Store
from jobgraph.store.tables import runs, task_runs
from jobgraph.store.tokens import Scope, Tokens
from tests.conftest import WritePipeline, sh, store_url
from tests.web.conftest import make_token, served


def _scope(path: str, token: str = "") -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), *([(b"authorization", f"Bearer {token}".encode())] if token else [])]
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}


async def stream(app: Starlette, path: str, leave: asyncio.Event | None = None,
                 token: str = "") -> tuple[int, list[tuple[str, Any]]]:
    """Drive the app as a server would: the status and every event (name, data) sent; `leave` set = client gone."""
    events: list[tuple[str, Any]] = []
    status = 0
    asked = False
    buffer = b""

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await (leave or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, buffer
        if message["type"] == "http.response.start":
            status = message["status"]
            assert status != 200 or b"content-length" not in dict(message["headers"])  # a stream has no length
            return
        buffer += message.get("body", b"")
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            lines = block.decode().splitlines()
            if lines and lines[0].startswith("event: "):
                events.append((lines[0][7:], json.loads(lines[1].removeprefix("data: "))))
            elif lines:
                events.append(("comment", lines[0]))

    await app(_scope(path, token), receive, send)
    return status, events


def test_changes_written_by_another_process_arrive_then_end(write_pipeline: WritePipeline, tmp_path: Path) -> None:
    path = write_pipeline({"jobs": [sh("a", "sleep 1"), sh("b", "echo b", after=["a"]),
                                    sh("c", "sleep 0.5", after=["b"])]})
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    running = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = store_url(tmp_path)
        deadline = time.monotonic() + 30
        while True:
            if (tmp_path / ".jobgraph" / "jobgraph.db").exists():
                with Store(url) as records:
                    found = records.runs(1)
                if found:
                    break
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        run_id = found[0].run_id
        with served(url, poll_secs=0.1) as app:
            status, events = asyncio.run(asyncio.wait_for(stream(app, f"/api/v1/runs/{run_id}/events"), 60))
    finally:
        assert running.wait(60) == 0
    assert status == 200
    names = [name for name, _ in events if name != "comment"]
    assert names[0] == "snapshot" and names[-1] == "end" and set(names[1:-1]) == {"change"}
    assert events[0][1]["run"]["state"] == "RUNNING" and events[-1][1] == {"run_id": run_id, "state": "SUCCEEDED"}
    seen = {(job["name"], job["state"]) for name, data in events if name == "change" for job in data["jobs"]}
    assert {("b", "SUCCEEDED"), ("c", "RUNNING"), ("c", "SUCCEEDED")} <= seen
    changes = [data for name, data in events if name == "change"]
    known = {job["name"]: job for job in events[0][1]["jobs"]}
    for data in changes:  # only what changed, never the whole run again
        assert all(known[job["name"]] != job for job in data["jobs"])
        known.update((job["name"], job) for job in data["jobs"])
    attempts = {(a["job"], a["status"]) for data in changes for a in data["attempts"]}
    assert ("c", "DONE") in attempts and changes[-1]["run"]["state"] == "SUCCEEDED"


def test_a_client_that_leaves_leaves_no_poller_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    at = datetime(2030, 1, 1, tzinfo=UTC)
    with Store(url) as records, records.engine.begin() as conn:  # a run that never ends: its stream never would
        conn.execute(insert(runs).values(run_id="r1", pipeline="p", state="RUNNING", run_attempt=1, started_at=at,
                                         scheduled_time=at, snapshot="{}", owner="nobody"))
        conn.execute(insert(task_runs).values(run_id="r1", task="a", run_attempt=1, state="RUNNING", attempts=1,
                                              pool="default", image="sh", predecessors="[]"))

    async def main(app: Starlette) -> tuple[list[tuple[str, Any]], float, int]:
        leave = asyncio.Event()
        streams = [asyncio.create_task(stream(app, "/api/v1/runs/r1/events", leave)) for _ in range(5)]
        await asyncio.sleep(1.0)
        assert app.state.streams.open == 5
        leave.set()
        started = time.monotonic()
        done = await asyncio.wait_for(asyncio.gather(*streams), 10)
        left = time.monotonic() - started
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return done[0][1], left, len(others)

    with served(url, poll_secs=0.05) as app:
        events, left, others = asyncio.run(main(app))
        assert app.state.streams.open == 0
    assert events[0][0] == "snapshot" and "end" not in [name for name, _ in events]
    assert left < 2 and others == 0


def _running_run(url: str, jobs: list[str]) -> None:
    """A run `r1` in the store, RUNNING, its jobs PENDING: the test moves it as an engine would."""
    at = datetime(2030, 1, 1, tzinfo=UTC)
    with Store(url) as records, records.engine.begin() as conn:
        conn.execute(insert(runs).values(run_id="r1", pipeline="p", state="RUNNING", run_attempt=1, started_at=at,
                                         scheduled_time=at, snapshot="{}", owner="nobody"))
        for job in jobs:
            conn.execute(insert(task_runs).values(run_id="r1", task=job, run_attempt=1, state="PENDING", attempts=0,
                                                  pool="default", image="sh", predecessors="[]"))


def _move(url: str, job: str | None, state: str = "SUCCEEDED") -> None:
    """One job (or, with None, the run) reaches `state`."""
    at = datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
    with Store(url) as records, records.engine.begin() as conn:
        if job is None:
            conn.execute(update(runs).where(runs.c.run_id == "r1").values(state=state, finished_at=at))
        else:
            conn.execute(update(task_runs).where(task_runs.c.run_id == "r1", task_runs.c.task == job).values(
                state=state, attempts=1, started_at=at, finished_at=at))


def test_many_streams_of_one_run_share_one_reading_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty clients on a changing run: the run is read once per change, not once per client and change."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    jobs = ["a", "b", "c"]
    _running_run(url, jobs)
    reads = 0
    detail = queries.run_detail

    def counted(records: Store, run_id: str) -> queries.Json:
        nonlocal reads
        reads += 1
        return detail(records, run_id)

    monkeypatch.setattr(queries, "run_detail", counted)

    async def main(app: Starlette) -> list[tuple[int, list[tuple[str, Any]]]]:
        clients = [asyncio.create_task(stream(app, "/api/v1/runs/r1/events")) for _ in range(20)]
        while app.state.streams.open < 20:
            await asyncio.sleep(0.01)
        for job in [*jobs, None]:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(_move, url, job)
        return await asyncio.wait_for(asyncio.gather(*clients), 30)

    with served(url, poll_secs=0.02) as app:
        done = asyncio.run(main(app))
        assert app.state.streams.open == 0 and app.state.streams.watches.watched() == 0
    for status, events in done:  # every client saw the whole story
        assert status == 200 and events[0][0] == "snapshot" and events[-1] == ("end", {"run_id": "r1",
                                                                                      "state": "SUCCEEDED"})
        seen = {job["name"]: job["state"] for _, data in events[:-1] for job in data["jobs"]}
        assert seen == dict.fromkeys(jobs, "SUCCEEDED")
    assert reads <= len(jobs) + 2, f"{reads} reads of the run for 20 clients and {len(jobs) + 1} changes"


def test_a_stream_ends_once_its_token_is_revoked(tmp_path: Path) -> None:
    """Off loopback a read token opens the stream; revoked, the stream says so and shows nothing written after."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _running_run(url, ["a", "b"])
    token = make_token(url, Scope.READ, "watcher")

    async def main(app: Starlette) -> tuple[int, list[tuple[str, Any]]]:
        client = asyncio.create_task(stream(app, "/api/v1/runs/r1/events", asyncio.Event(), token))
        await asyncio.to_thread(_move, url, "a")
        await asyncio.sleep(0.5)
        with Store(url) as records:
            Tokens(records).revoke("watcher", datetime.now(UTC))
        await asyncio.sleep(1.0)  # far more than a poll: any check from now on sees the revocation
        await asyncio.to_thread(_move, url, "b")
        return await asyncio.wait_for(client, 10)

    with served(url, public=True, poll_secs=0.05) as app:
        status, events = asyncio.run(main(app))
        assert app.state.streams.open == 0
    assert status == 200 and events[0][0] == "snapshot"
    assert events[-1] == ("refused", {"error": "the token is unknown, revoked or expired"})
    shown = {job["name"]: job["state"] for _, data in events[:-1] for job in data["jobs"]}
    assert shown == {"a": "SUCCEEDED", "b": "PENDING"}  # b's change came after the revocation: never sent


def test_newlines_in_what_a_job_wrote_never_break_the_stream_framing(tmp_path: Path) -> None:
    """An error holding `\\n\\nevent: end` (or U+2028, or a NUL) arrives as data of one event, not as events."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _running_run(url, ["a"])
    hostile = 'oops\n\nevent: end\ndata: {"run_id": "r1", "state": "SUCCEEDED"}\n\n\u2028\r: x\x00'

    async def main(app: Starlette) -> tuple[int, list[tuple[str, Any]]]:
        client = asyncio.create_task(stream(app, "/api/v1/runs/r1/events"))
        await asyncio.sleep(0.3)
        with Store(url) as records, records.engine.begin() as conn:
            conn.execute(update(task_runs).where(task_runs.c.task == "a").values(state="FAILED", error_message=hostile))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(_move, url, None, "FAILED")
        return await asyncio.wait_for(client, 10)

    with served(url, poll_secs=0.05) as app:
        status, events = asyncio.run(main(app))
    names = [name for name, _ in events]
    assert status == 200 and names[0] == "snapshot" and names[-1] == "end" and set(names[1:-1]) == {"change"}
    assert [job["error"] for _, data in events[1:-1] for job in data["jobs"]] == [hostile]
    assert events[-1][1] == {"run_id": "r1", "state": "FAILED"}


def test_streams_beyond_the_servers_limit_get_503_until_one_closes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _running_run(url, ["a"])

    async def main(app: Starlette) -> tuple[list[int], int]:
        leave = asyncio.Event()
        held = [asyncio.create_task(stream(app, "/api/v1/runs/r1/events", leave)) for _ in range(3)]
        while app.state.streams.open < 3:
            await asyncio.sleep(0.01)
        refused, _ = await stream(app, "/api/v1/runs/r1/events")
        leave.set()
        statuses = [status for status, _ in await asyncio.gather(*held)]
        again = asyncio.create_task(stream(app, "/api/v1/runs/r1/events"))
        await asyncio.to_thread(_move, url, None, "FAILED")
        status, _ = await asyncio.wait_for(again, 10)
        return [*statuses, refused], status

    with served(url, poll_secs=0.02, max_streams=3) as app:
        statuses, again = asyncio.run(main(app))
        assert app.state.streams.open == 0
    assert statuses == [200, 200, 200, 503] and again == 200
