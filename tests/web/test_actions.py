"""The actions through the API change the store as the CLI would: retry and trigger on the server's RunHost,
cancel through the store (the run's own process cancels it), suspend and resume the deployment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from jobgraph.app.host import RunHost
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from jobgraph.store.tokens import Scope
from tests.conftest import Cli, WritePipeline, process_alive, sh, store_url
from tests.web.conftest import SECRET, bearer, call, get, make_token, served


async def _until_done(host: RunHost, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while host.running():
        assert time.monotonic() < deadline, "the hosted run never ended"
        await asyncio.sleep(0.05)


def test_retry_claims_the_run_and_runs_what_failed_on_the_host(ran: dict[str, Any], monkeypatch: Any) -> None:
    operate = make_token(ran["url"], Scope.OPERATE, "ops")
    monkeypatch.setenv("TOKEN", SECRET)
    with Store(ran["url"]) as host_records:
        lines: list[str] = []
        host = RunHost(host_records, None, lines.append)
        with served(ran["url"], host=host) as app:

            async def work(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
                answer = await client.post(f"/api/v1/runs/{ran['run_id']}/retry", headers=bearer(operate))
                await _until_done(host)
                await host.close(drain=False)
                return answer.status_code, answer.json()

            status, body = call(app, work)
        assert status == 202 and body == {"run_id": ran["run_id"]}
        run = host_records.run(ran["run_id"])
        assert run.run_attempt == 2 and run.state == "FAILED"  # flaky fails again: exit 3 each time
        flaky = [a for a in host_records.attempts(ran["run_id"], "flaky") if a.run_attempt == 2]
        assert [a.attempt for a in flaky] == [4, 5, 6]
    assert any("ops" in line for line in lines)


def test_retry_with_jobs_in_the_body_reruns_those_and_a_bad_body_changes_nothing(
        ran: dict[str, Any], monkeypatch: Any) -> None:
    operate = make_token(ran["url"], Scope.OPERATE, "ops")
    monkeypatch.setenv("TOKEN", SECRET)
    url = f"/api/v1/runs/{ran['run_id']}/retry"
    with Store(ran["url"]) as host_records:
        host = RunHost(host_records, None, lambda _line: None)
        with served(ran["url"], host=host) as app:

            async def work(client: httpx.AsyncClient) -> list[httpx.Response]:
                refused = [await client.post(url, headers=bearer(operate), content=body) for body in (
                    b'{"jobs": ["firstt"]}', b'{"jobs": "first"}', b'{"downstream": true}', b'[1]', b'{"job": []}',
                    b'not json', b'{"jobs": ["later"], "downstream": "yes"}')]
                answer = await client.post(url, headers=bearer(operate), json={"jobs": ["first"], "downstream": False})
                await _until_done(host)
                await host.close(drain=False)
                return [*refused, answer]

            *refused, answer = call(app, work)
        assert [r.status_code for r in refused] == [400] * 7, [r.text for r in refused]
        assert "field 'jobs': no job named 'firstt' in pipeline p (did you mean 'first'?)" in refused[0].json()["error"]
        assert answer.status_code == 202, answer.text
        run = host_records.run(ran["run_id"])
        assert run.run_attempt == 2 and run.state == "FAILED"  # first ran again; flaky is kept FAILED
        assert [(a.task, a.attempt) for a in host_records.attempts(ran["run_id"]) if a.run_attempt == 2] == [
            ("first", 2)]
        assert {t.task: (t.state, t.run_attempt) for t in host_records.tasks(ran["run_id"])} == {
            "first": ("SUCCEEDED", 2), "flaky": ("FAILED", 1), "later": ("SKIPPED", 1)}
    with served(ran["url"]) as app:
        page = get(app, f"/runs/{ran['run_id']}").text
    assert '<p class="facts" id="selection">attempt 2 reran first (1 job)</p>' in page


def test_trigger_runs_the_deployed_version_and_suspend_resume_change_it(cli: Cli, write_pipeline: WritePipeline,
                                                                         tmp_path: Path) -> None:
    path = write_pipeline({"name": "nightly", "schedule": "60 MINUTE", "jobs": [sh("a", "echo triggered")]})
    cli("deploy", str(path), check=0)
    url = store_url(tmp_path)
    operate = make_token(url, Scope.OPERATE, "ops")
    with Store(url) as host_records:
        host = RunHost(host_records, None, lambda _line: None)
        with served(url, host=host) as app:

            async def work(client: httpx.AsyncClient) -> list[httpx.Response]:
                triggered = await client.post("/api/v1/pipelines/NIGHTLY/trigger", headers=bearer(operate))
                await _until_done(host)
                suspended = await client.post("/api/v1/pipelines/nightly/suspend", headers=bearer(operate))
                resumed = await client.post("/api/v1/pipelines/nightly/resume", headers=bearer(operate))
                unknown = await client.post("/api/v1/pipelines/nope/trigger", headers=bearer(operate))
                await host.close(drain=False)
                return [triggered, suspended, resumed, unknown]

            triggered, suspended, resumed, unknown = call(app, work)
        assert triggered.status_code == 202 and triggered.json()["action"] == "STARTED"
        run = host_records.run(triggered.json()["run_id"])
        assert run.pipeline == "nightly" and run.state == "SUCCEEDED" and run.trigger == "trigger"
        assert suspended.json()["pipeline"]["state"] == "SUSPENDED"
        assert suspended.json()["pipeline"]["next_fire_at"] is None
        assert resumed.json()["pipeline"]["state"] == "ACTIVE" and resumed.json()["pipeline"]["next_fire_at"]
        assert Deployments(host_records).get("nightly").state == "ACTIVE"
        assert unknown.status_code == 404 and "nope" in unknown.json()["error"]


def test_without_a_host_retry_and_trigger_say_why_not(ran: dict[str, Any]) -> None:
    operate = make_token(ran["url"], Scope.OPERATE)
    with served(ran["url"]) as app:
        answer = get(app, f"/api/v1/runs/{ran['run_id']}/retry", method="POST", headers=bearer(operate))
    assert answer.status_code == 409 and "RunHost" in answer.json()["error"]


def test_cancel_asks_the_process_that_owns_the_run(write_pipeline: WritePipeline, tmp_path: Path) -> None:
    path = write_pipeline({"jobs": [sh("long", "sleep 60"), sh("after", "true", after=["long"])]})
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    owner = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = store_url(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if (tmp_path / ".jobgraph" / "jobgraph.db").exists():
                with Store(url) as records:
                    found = records.runs(1)
                if found and found[0].task_counts.get("RUNNING"):
                    break
            assert time.monotonic() < deadline, "the run never started its job"
            time.sleep(0.05)
        run_id = found[0].run_id
        operate = make_token(url, Scope.OPERATE, "ops")
        with served(url) as app:
            answer = get(app, f"/api/v1/runs/{run_id}/cancel", method="POST", headers=bearer(operate))
            assert answer.status_code == 202 and answer.json()["run"]["cancel_requested_at"]
            assert owner.wait(30) == 130
            ended = get(app, f"/api/v1/runs/{run_id}").json()
            again = get(app, f"/api/v1/runs/{run_id}/cancel", method="POST", headers=bearer(operate))
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert ended["run"]["state"] == "CANCELLED"
    assert {job["name"]: job["state"] for job in ended["jobs"]} == {"long": "CANCELLED", "after": "CANCELLED"}
    assert again.status_code == 409 and again.json()["error"]
    with Store(url) as records, records.engine.connect() as conn:
        from sqlalchemy import select

        from jobgraph.store.tables import runs

        by = conn.execute(select(runs.c.cancel_requested_by).where(runs.c.run_id == run_id)).scalar()
    assert by == "api token ops"
    assert not process_alive(owner.pid)
