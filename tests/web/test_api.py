"""The API's reads over stores real runs wrote: shapes, paging, logs, secrets, hostile data, errors, no blocking."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from jobgraph.app import queries
from jobgraph.store import Store
from jobgraph.store.tables import attempts, runs, task_runs
from tests.web.conftest import SECRET, call, get, served

HOSTILE = "<img src=x onerror=alert(1)>\"'&{{7*7}}"


def test_pipelines_runs_run_and_graph_have_the_contract_shapes(ran: dict[str, Any]) -> None:
    with served(ran["url"]) as app:
        pipelines = get(app, "/api/v1/pipelines").json()["pipelines"]
        assert [(p["name"], p["state"], p["schedule"]) for p in pipelines] == [("p", "ACTIVE", None)]
        assert pipelines[0]["last_run"]["run_id"] == ran["run_id"] and pipelines[0]["last_run"]["state"] == "FAILED"
        one = get(app, "/api/v1/pipelines/p").json()["pipeline"]
        graph = get(app, f"/api/v1/pipelines/p/versions/{one['version']}/graph").json()
        assert [(j["name"], j["after"], j["runner"], j["finalizer"]) for j in graph["jobs"]] == [
            ("first", [], "local", False), ("flaky", ["first"], "local", False), ("later", ["flaky"], "local", False)]

        listed = get(app, "/api/v1/runs").json()
        assert listed["next_cursor"] is None
        (run,) = listed["runs"]
        assert run["run_id"] == ran["run_id"] and run["state"] == "FAILED" and run["trigger"] == "manual"
        assert run["job_counts"] == {"SUCCEEDED": 1, "FAILED": 1, "SKIPPED": 1}
        assert run["started_at"].endswith("Z") and datetime.fromisoformat(run["started_at"]).tzinfo is not None

        detail = get(app, f"/api/v1/runs/{ran['run_id']}").json()
        assert detail["run"]["owner"] and detail["run"]["cancel_requested_at"] is None
        states = {job["name"]: (job["state"], job["attempts"]) for job in detail["jobs"]}
        assert states == {"first": ("SUCCEEDED", 1), "flaky": ("FAILED", 3), "later": ("SKIPPED", 0)}
        tried = [(a["job"], a["attempt"], a["status"], a["exit_code"], a["runner"]) for a in detail["attempts"]]
        assert tried == [("first", 1, "DONE", 0, "local"), *[("flaky", n, "FAILED", 3, "local") for n in (1, 2, 3)]]
        assert get(app, f"/api/v1/runs/{ran['run_id']}/graph").json() == graph


def test_secrets_appear_in_no_response(ran: dict[str, Any]) -> None:
    run_id = ran["run_id"]
    with served(ran["url"]) as app:
        detail = get(app, f"/api/v1/runs/{run_id}")
        assert detail.json()["jobs"][0]["return_value"] == "return-***"
        bodies = [detail.text, get(app, "/api/v1/runs").text, get(app, "/api/v1/pipelines").text,
                  get(app, f"/api/v1/runs/{run_id}/graph").text, get(app, "/api/v1/pipelines/p").text]
        logs = {f"{a['job']}/{a['attempt']}": get(app, f"/api/v1/runs/{run_id}/jobs/{a['job']}/attempts/"
                                                       f"{a['attempt']}/log").text for a in detail.json()["attempts"]}
        streamed = call(app, lambda client: client.get(f"/api/v1/runs/{run_id}/events"))  # an ended run's stream ends
        bodies += [*logs.values(), streamed.text]
    assert logs["first/1"] == "hello\n***\n" and "***" in logs["flaky/3"]
    assert all(SECRET not in body for body in bodies)
    assert "event: snapshot" in streamed.text and "event: end" in streamed.text


def test_a_log_is_read_in_chunks_with_its_next_offset_and_completeness(ran: dict[str, Any]) -> None:
    path = f"/api/v1/runs/{ran['run_id']}/jobs/first/attempts/1/log"
    with served(ran["url"]) as app:
        head = get(app, path, params={"limit": 3})
        assert head.text == "hel" and head.headers["X-Log-Next-Offset"] == "3"
        assert head.headers["X-Log-Complete"] == "false" and head.headers["content-type"].startswith("text/plain")
        rest = get(app, path, params={"offset": 3})
        assert rest.text == "lo\n***\n" and rest.headers["X-Log-Complete"] == "true"
        assert rest.headers["X-Log-Next-Offset"] == str(len("hello\n***\n"))
        beyond = get(app, path, params={"offset": 1000})
        assert beyond.text == "" and beyond.headers["X-Log-Complete"] == "true"
        tail = get(app, path, params={"offset": -4})
        assert tail.text == "***\n" and tail.headers["X-Log-Next-Offset"] == str(len("hello\n***\n"))
        assert get(app, path, params={"offset": -1000}).text == "hello\n***\n"
        for bad in ({"offset": "x"}, {"limit": 0}, {"limit": "many"}):
            refused = get(app, path, params=bad)
            assert refused.status_code == 400 and "error" in refused.json()


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_a_log_replaced_by_a_link_or_a_fifo_is_refused(ran: dict[str, Any], tmp_path: Path, plant: str) -> None:
    with Store(ran["url"]) as records:
        log = next(a.log_path for a in records.attempts(ran["run_id"]) if a.task == "first")
    log.unlink()
    if plant == "symlink":
        (tmp_path / "host-secret").write_text("host file content")
        log.symlink_to(tmp_path / "host-secret")
    else:
        os.mkfifo(log)  # opening it for reading would block the server: it must not even be opened
    with served(ran["url"]) as app:
        refused = get(app, f"/api/v1/runs/{ran['run_id']}/jobs/first/attempts/1/log")
    assert refused.status_code == 403 and "not a regular file" in refused.json()["error"]
    assert "host file content" not in refused.text


def test_unknown_things_are_404_json_and_bad_parameters_400(ran: dict[str, Any]) -> None:
    with served(ran["url"]) as app:
        for path in ("/api/v1/runs/nope", "/api/v1/runs/nope/graph", "/api/v1/runs/nope/events",
                     "/api/v1/runs/nope/jobs/first/attempts/1/log",
                     f"/api/v1/runs/{ran['run_id']}/jobs/x/attempts/1/log",
                     "/api/v1/pipelines/nope", "/api/v1/pipelines/p/versions/0000/graph", "/api/v1/nothing"):
            answer = get(app, path)
            assert answer.status_code == 404, path
            assert answer.headers["content-type"] == "application/json" and answer.json()["error"]
        short = get(app, f"/api/v1/runs/{ran['run_id'][:8]}")  # the short id the page and the CLI show
        assert short.status_code == 404 and "the API takes a run's whole id" in short.json()["error"]
        for params in ({"limit": 0}, {"limit": 501}, {"state": "SLEEPY"}, {"cursor": "garbage!"}):
            answer = get(app, "/api/v1/runs", params=params)
            assert answer.status_code == 400 and answer.json()["error"], params


def _insert_runs(url: str, count: int, pipeline: str = "bulk", same_time: bool = False) -> list[str]:
    """`count` runs written straight into the store, each with one job; their ids, newest first."""
    base = datetime(2030, 1, 1, tzinfo=UTC)
    made = []
    with Store(url) as records, records.engine.begin() as conn:
        for n in range(count):
            at = base if same_time else base + timedelta(seconds=n)
            run_id = str(uuid.uuid4())
            made.append((at, run_id))
            conn.execute(insert(runs).values(run_id=run_id, pipeline=pipeline, state="SUCCEEDED" if n % 3 else
                                             "FAILED", run_attempt=1, started_at=at, scheduled_time=at,
                                             finished_at=at, snapshot="{}", trigger="schedule"))
            conn.execute(insert(task_runs).values(run_id=run_id, task="a", run_attempt=1, state="SUCCEEDED",
                                                  attempts=1, pool="default", image="sh", predecessors="[]"))
    return [run_id for _, run_id in sorted(made, reverse=True)]


@pytest.mark.parametrize("same_time", [False, True], ids=["distinct times", "one time"])
def test_runs_page_newest_first_by_cursor_each_run_once(any_store_url: str, same_time: bool) -> None:
    expected = _insert_runs(any_store_url, 130, same_time=same_time)
    seen: list[str] = []
    with served(any_store_url) as app:
        cursor: str | None = None
        while True:
            page = get(app, "/api/v1/runs", params={"limit": 50, **({"cursor": cursor} if cursor else {})}).json()
            seen += [run["run_id"] for run in page["runs"]]
            assert all(run["job_counts"] == {"SUCCEEDED": 1} for run in page["runs"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        failed = get(app, "/api/v1/runs", params={"state": "failed", "limit": 500}).json()["runs"]
        other = get(app, "/api/v1/runs", params={"pipeline": "other"}).json()
    assert seen == expected
    assert len(failed) == 44 and {run["state"] for run in failed} == {"FAILED"}
    assert other == {"runs": [], "next_cursor": None}


def test_hostile_names_and_errors_round_trip_as_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    at = datetime(2030, 1, 1, tzinfo=UTC)
    log = tmp_path / "hostile.log"
    log.write_text(HOSTILE)
    with Store(url) as records, records.engine.begin() as conn:
        snapshot = json.dumps({"name": HOSTILE, "jobs": [{"name": HOSTILE, "image": HOSTILE, "after": []}]})
        conn.execute(insert(runs).values(run_id="r1", pipeline=HOSTILE, state="FAILED", run_attempt=1,
                                         started_at=at, scheduled_time=at, snapshot=snapshot))
        conn.execute(insert(task_runs).values(run_id="r1", task=HOSTILE, run_attempt=1, state="FAILED", attempts=1,
                                              pool="default", image=HOSTILE, predecessors="[]", error_message=HOSTILE))
        conn.execute(insert(attempts).values(run_id="r1", task=HOSTILE, attempt=1, run_attempt=1, status="FAILED",
                                             error=HOSTILE, log_path=str(log), started_at=at, created_date=at))
    with served(url) as app:
        detail = get(app, "/api/v1/runs/r1").json()
        listed = get(app, "/api/v1/runs", params={"pipeline": HOSTILE}).json()["runs"]
        graph = get(app, "/api/v1/runs/r1/graph").json()
        logged = get(app, f"/api/v1/runs/r1/jobs/{httpx.URL('/' + HOSTILE).raw_path.decode()[1:]}/attempts/1/log")
    assert detail["run"]["pipeline"] == HOSTILE and detail["jobs"][0]["name"] == HOSTILE
    assert detail["jobs"][0]["error"] == HOSTILE and detail["attempts"][0]["error"] == HOSTILE
    assert [run["pipeline"] for run in listed] == [HOSTILE]
    assert graph["jobs"][0]["name"] == HOSTILE and graph["jobs"][0]["image"] == HOSTILE
    assert logged.status_code == 200 and logged.text == HOSTILE
    assert logged.headers["content-type"].startswith("text/plain")
    assert logged.headers["x-content-type-options"] == "nosniff"


def test_a_slow_read_never_holds_the_event_loop(ran: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads run in worker threads: while several are stuck in the store, /healthz and other reads still answer."""
    release, entered = threading.Event(), threading.Semaphore(0)
    slow_detail = queries.run_detail

    def stuck(records: Store, run_id: str) -> dict[str, Any]:
        entered.release()
        assert release.wait(30)
        return slow_detail(records, run_id)

    monkeypatch.setattr(queries, "run_detail", stuck)
    with served(ran["url"]) as app:

        async def work(client: httpx.AsyncClient) -> list[int]:
            slow = [asyncio.create_task(client.get(f"/api/v1/runs/{ran['run_id']}")) for _ in range(4)]
            for _ in range(4):
                await asyncio.to_thread(entered.acquire)
            quick = [await client.get("/healthz"), *await asyncio.gather(
                *(client.get("/api/v1/runs") for _ in range(8)))]
            assert not any(task.done() for task in slow)
            release.set()
            return [r.status_code for r in quick + list(await asyncio.gather(*slow))]

        statuses = call(app, work)
    assert statuses == [200] * 13


def _one_finished_attempt(url: str, log: Path) -> None:
    """Run r1 of pipeline p: job a, whose one attempt ended DONE with `log` as its log."""
    at = datetime(2030, 1, 1, tzinfo=UTC)
    with Store(url) as records, records.engine.begin() as conn:
        conn.execute(insert(runs).values(run_id="r1", pipeline="p", state="SUCCEEDED", run_attempt=1,
                                         started_at=at, scheduled_time=at, snapshot="{}"))
        conn.execute(insert(task_runs).values(run_id="r1", task="a", run_attempt=1, state="SUCCEEDED", attempts=1,
                                              pool="default", image="sh", predecessors="[]"))
        conn.execute(insert(attempts).values(run_id="r1", task="a", attempt=1, run_attempt=1, status="DONE",
                                             log_path=str(log), started_at=at, finished_at=at, created_date=at))


def test_log_chunks_and_tails_start_and_end_on_whole_characters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    log = tmp_path / "utf8.log"
    log.write_text("é" * 10)  # 2 bytes each
    _one_finished_attempt(url, log)
    with served(url) as app:
        head = get(app, "/api/v1/runs/r1/jobs/a/attempts/1/log", params={"limit": 5})
        tail = get(app, "/api/v1/runs/r1/jobs/a/attempts/1/log", params={"offset": -5})
    assert head.content == "éé".encode() and head.headers["X-Log-Next-Offset"] == "4"
    assert head.headers["X-Log-Complete"] == "false"
    assert tail.content == "éé".encode() and tail.headers["X-Log-Next-Offset"] == "20"
    assert tail.headers["X-Log-Complete"] == "true"


def test_a_tail_of_a_log_that_is_not_utf8_costs_a_few_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job can print megabytes of UTF-8 continuation bytes: finding where a tail starts looks at most 3 of them
    (one character's worth), not one system call per byte from the offset asked for to the end."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    log = tmp_path / "binary.log"
    log.write_bytes(b"\x80" * 2_000_000 + "é".encode())
    _one_finished_attempt(url, log)
    reads = 0
    pread = os.pread

    def counted(fd: int, length: int, offset: int) -> bytes:
        nonlocal reads
        reads += 1
        return pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", counted)
    with served(url) as app:
        tail = get(app, "/api/v1/runs/r1/jobs/a/attempts/1/log", params={"offset": -1_900_000, "limit": 8})
    assert tail.status_code == 200 and reads <= 5, f"{reads} reads"
    assert tail.content == b"\x80" * 8 and tail.headers["X-Log-Next-Offset"] == str(100_005 + 8)
