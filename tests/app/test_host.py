"""RunHost, as the scheduler service and the web server use it: runs hosted on the caller's event loop, with
real job processes and a real store (SQLite and PostgreSQL). A retry reruns only what did not succeed, a
trigger goes to a live service or runs the deployed version here, of two retries of one run exactly one runs
it, and closing the host leaves no job process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobgraph.app import pipelines
from jobgraph.app.cancel import cancel_run
from jobgraph.app.host import RunHost
from jobgraph.config import load
from jobgraph.errors import RunnerError, StoreError
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from tests.conftest import WritePipeline, process_alive, sh


@pytest.fixture(autouse=True)
def jobgraph_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host runs in this process: its logs go to tmp_path, its jobs start there."""
    monkeypatch.setenv("JOBGRAPH_HOME", str(tmp_path / ".jobgraph"))
    monkeypatch.chdir(tmp_path)


def jobgraph(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    return subprocess.run([sys.executable, "-m", "jobgraph", *args, "--store", url], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


async def until(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def failed_run(tmp_path: Path, url: str, write_pipeline: WritePipeline, gate: Path) -> str:
    """A run, by `jobgraph run`, whose job `flaky` failed (until `gate` exists) and `last` was skipped."""
    write_pipeline({"jobs": [sh("first", f"echo ran >> {tmp_path / 'first'}"),
                             sh("flaky", f"echo ran >> {tmp_path / 'flaky'}; [ -e {gate} ] || exit 3",
                                after=["first"]),
                             sh("last", "true", after=["flaky"])]})
    result = jobgraph(tmp_path, url, "run", "pipeline.yaml")
    assert result.returncode == 1, result.stdout + result.stderr
    with Store(url) as records:
        return records.runs(1)[0].run_id


def test_a_retry_reruns_only_the_failed_jobs_and_records_them(tmp_path: Path, write_pipeline: WritePipeline,
                                                              any_store_url: str) -> None:
    gate = tmp_path / "gate"
    run_id = failed_run(tmp_path, any_store_url, write_pipeline, gate)
    gate.touch()
    said: list[str] = []

    async def retry() -> str:
        with Store(any_store_url) as records:
            host = RunHost(records, None, said.append)
            started = await host.start_retry(run_id[:8], "tester")
            assert host.running() == [run_id]
            await until(lambda: not host.running())
            await host.close(drain=True)
            return started

    assert asyncio.run(retry()) == run_id
    assert (lines(tmp_path / "first"), lines(tmp_path / "flaky")) == (1, 2)
    with Store(any_store_url) as records:
        run = records.run(run_id)
        assert (run.state, run.run_attempt) == (RunState.SUCCEEDED, 2)
        assert {t.task: t.state for t in records.tasks(run_id)} == dict.fromkeys(("first", "flaky", "last"),
                                                                                   TaskState.SUCCEEDED)
        assert [(a.task, a.status) for a in records.attempts(run_id) if a.task != "first"] == [
            ("flaky", AttemptStatus.FAILED), ("flaky", AttemptStatus.DONE), ("last", AttemptStatus.DONE)]
        assert [a.run_attempt for a in records.attempts(run_id, "first")] == [1]
    assert any(line.startswith("tester: retrying run") and "keeping 1 succeeded jobs" in line for line in said)


def test_of_two_retries_of_one_run_one_runs_it_the_other_is_refused(tmp_path: Path, write_pipeline: WritePipeline,
                                                                    any_store_url: str) -> None:
    gate = tmp_path / "gate"
    run_id = failed_run(tmp_path, any_store_url, write_pipeline, gate)
    gate.touch()

    async def both() -> list[str | BaseException]:
        with Store(any_store_url) as records:
            host = RunHost(records, None, lambda _text: None)
            outcomes = await asyncio.gather(host.start_retry(run_id, "a"), host.start_retry(run_id, "b"),
                                            return_exceptions=True)
            await host.close(drain=True)
            return outcomes

    outcomes = asyncio.run(both())
    assert sorted(type(o).__name__ for o in outcomes) == ["StoreError", "str"], outcomes
    refused = next(o for o in outcomes if isinstance(o, StoreError))
    assert "nothing was run" in str(refused) and run_id in outcomes
    assert lines(tmp_path / "flaky") == 2
    with Store(any_store_url) as records:
        assert (records.run(run_id).state, records.run(run_id).run_attempt) == (RunState.SUCCEEDED, 2)


def test_a_retry_of_a_run_that_succeeded_or_does_not_exist_is_refused(tmp_path: Path,
                                                                      write_pipeline: WritePipeline) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    gate = tmp_path / "gate"
    gate.touch()
    write_pipeline({"jobs": [sh("a", "true")]})
    assert jobgraph(tmp_path, url, "run", "pipeline.yaml").returncode == 0
    with Store(url) as records:
        run_id = records.runs(1)[0].run_id

        async def refused(which: str) -> str:
            host = RunHost(records, None, lambda _text: None)
            with pytest.raises(StoreError) as error:
                await host.start_retry(which, "tester")
            assert host.running() == []
            await host.close(drain=False)
            return str(error.value)

        assert asyncio.run(refused(run_id)) == f"run {run_id} succeeded: nothing to retry"
        assert "no-such-run" in asyncio.run(refused("no-such-run"))
        assert records.run(run_id).run_attempt == 1


def test_a_trigger_with_no_service_runs_the_deployed_version_here(tmp_path: Path, write_pipeline: WritePipeline,
                                                                  any_store_url: str) -> None:
    release = tmp_path / "release"
    path = write_pipeline({"name": "nightly", "jobs": [
        sh("wait", f"while [ ! -e {release} ]; do sleep 0.05; done"), sh("after", "echo done", after=["wait"])]})
    with Store(any_store_url) as records:
        deployed = pipelines.deploy(records, load(path), path).pipeline
        path.write_text("name: nightly\njobs: [{name: other, image: sh}]\nimages: {sh: [sh, -c]}\n")  # not deployed
        said: list[str] = []

        async def trigger() -> str:
            host = RunHost(records, None, said.append)
            outcome = await host.start_trigger("NIGHTLY", "tester")
            assert (outcome.action, outcome.holder) == ("STARTED", None) and outcome.run_id is not None
            assert host.running() == [outcome.run_id]  # returned while the run goes on
            assert records.run(outcome.run_id).state == RunState.RUNNING
            release.touch()
            await until(lambda: not host.running())
            await host.close(drain=True)
            return outcome.run_id

        run_id = asyncio.run(trigger())
        run = records.run(run_id)
        assert (run.state, run.version, run.trigger, run.pipeline) == (RunState.SUCCEEDED, deployed.version,
                                                                       "trigger", "nightly")
        assert [t.task for t in records.tasks(run_id)] == ["after", "wait"]
        assert any("no scheduler service" in line or "triggered by tester" in line for line in said)


def test_closing_without_drain_cancels_the_runs_and_leaves_no_process(tmp_path: Path,
                                                                      write_pipeline: WritePipeline) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    pid, child = tmp_path / "pid", tmp_path / "child"
    path = write_pipeline({"name": "long", "jobs": [
        sh("sleeper", f"sleep 300 & echo $! > {child}; echo $$ > {pid}; wait")]})
    with Store(url) as records:
        pipelines.deploy(records, load(path), path)

        async def cancelled() -> tuple[str, list[int]]:
            host = RunHost(records, None, lambda _text: None)
            outcome = await host.start_trigger("long", "tester")
            assert outcome.run_id is not None
            await until(lambda: pid.exists() and child.exists() and bool(child.read_text().strip())
                        and bool(pid.read_text().strip()))
            pids = [int(pid.read_text()), int(child.read_text())]
            assert all(process_alive(p) for p in pids)
            await host.close(drain=False)
            assert host.running() == []
            return outcome.run_id, pids

        run_id, pids = asyncio.run(cancelled())
        assert [p for p in pids if process_alive(p)] == []
        assert records.run(run_id).state == RunState.CANCELLED
        assert [t.state for t in records.tasks(run_id)] == [TaskState.CANCELLED]


def test_a_trigger_with_a_live_service_is_its_request(tmp_path: Path, write_pipeline: WritePipeline,
                                                      any_store_url: str) -> None:
    path = write_pipeline({"name": "nightly", "jobs": [sh("a", "true")]})
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    with Store(any_store_url) as records:
        pipelines.deploy(records, load(path), path)
        service = subprocess.Popen([sys.executable, "-m", "jobgraph", "serve", "--tick", "0.1", "--store",
                                    any_store_url], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            deployments = Deployments(records)

            async def trigger() -> tuple[str | None, str | None]:
                await until(lambda: deployments.lease_holder("scheduler", datetime.now(UTC)) is not None)
                host = RunHost(records, None, lambda _text: None)
                outcome = await host.start_trigger("nightly", "tester")
                assert outcome.action == "STARTED" and host.running() == []
                await host.close(drain=True)
                return outcome.run_id, outcome.holder

            run_id, holder = asyncio.run(trigger())
            assert run_id is not None and holder is not None and holder.split(":")[1] == str(service.pid)
            assert records.run(run_id).owner == holder
            assert any(fire.note == "tester" for fire in deployments.fires("nightly"))
        finally:
            service.send_signal(signal.SIGTERM)
            output = service.communicate(timeout=60)[0]
        assert service.returncode == 0, output
        assert f"run {run_id}" in output or "started" in output


def test_a_retry_whose_runner_cannot_be_reached_gives_the_run_back(tmp_path: Path, write_pipeline: WritePipeline,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    gate = tmp_path / "gate"
    run_id = failed_run(tmp_path, url, write_pipeline, gate)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with Store(url) as records:

        async def retry() -> str:
            host = RunHost(records, "docker", lambda _text: None)
            with pytest.raises(RunnerError) as error:
                await host.start_retry(run_id, "tester")
            assert host.running() == []
            await host.close(drain=False)
            return str(error.value)

        assert "runner docker" in asyncio.run(retry())
        run = records.run(run_id)
        assert (run.state, run.run_attempt) == (RunState.FAILED, 1)
    gate.touch()
    assert jobgraph(tmp_path, url, "retry", run_id).returncode == 0  # given back: a retry can claim it


def test_a_hosted_run_is_cancelled_through_the_store(tmp_path: Path, write_pipeline: WritePipeline,
                                                     any_store_url: str) -> None:
    pid = tmp_path / "pid"
    path = write_pipeline({"name": "long", "jobs": [sh("sleeper", f"echo $$ > {pid}; exec sleep 300")]})
    said: list[str] = []
    with Store(any_store_url) as records:
        pipelines.deploy(records, load(path), path)

        async def cancelled() -> tuple[str, int]:
            host = RunHost(records, None, said.append)
            outcome = await host.start_trigger("long", "tester")
            assert outcome.run_id is not None
            await until(lambda: pid.exists() and bool(pid.read_text().strip()))
            cancel_run(records, outcome.run_id, "someone else")
            await until(lambda: not host.running(), seconds=30)
            await host.close(drain=True)
            return outcome.run_id, int(pid.read_text())

        run_id, job = asyncio.run(cancelled())
        assert not process_alive(job)
        assert records.run(run_id).state == RunState.CANCELLED
        assert any("cancel requested by someone else" in line for line in said)
