"""Deployed pipelines and `jobgraph serve` end to end: versions, suspend/resume, drop, trigger, SIGTERM, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from tests.conftest import Cli, WritePipeline, process_alive, sh, store_url


def wait_until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def start_serve(tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    return subprocess.Popen([sys.executable, "-m", "jobgraph", "serve", "--tick", "0.1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_deploy_versions_suspend_resume_and_drop(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "nightly", "schedule": "USING CRON 0 2 * * * Europe/Paris", "jobs": [sh("a", "true")]})
    first = cli("deploy", "pipeline.yaml", check=0).stdout
    assert "deployed nightly: new version" in first and "next run 2026-" in first
    assert "unchanged version" in cli("deploy", "pipeline.yaml", check=0).stdout
    write_pipeline({"name": "nightly", "schedule": "USING CRON 0 2 * * * Europe/Paris", "jobs": [sh("a", "echo")]})
    assert "new version" in cli("deploy", "pipeline.yaml", check=0).stdout
    store = Store(store_url(tmp_path))
    deployments = Deployments(store)
    assert deployments.get("NIGHTLY").next_fire_at is not None
    assert deployments.get("nightly").next_fire_at.hour == 1  # type: ignore[union-attr]  # 02:00 Paris = 01:00 UTC

    assert "nightly suspended" in cli("suspend", "nightly", check=0).stdout
    listed = cli("pipelines", check=0).stdout
    assert "SUSPENDED" in listed and "suspended by hand" in listed
    assert "nightly resumed; next run" in cli("resume", "nightly", check=0).stdout
    assert deployments.get("nightly").state == "ACTIVE"

    assert cli("trigger", "nightly", check=0).returncode == 0
    run = store.runs(1, "nightly")[0]
    assert run.state == "SUCCEEDED"
    assert "nightly dropped; its run history is kept" in cli("drop", "nightly", check=0).stdout
    assert "no deployed pipeline named 'nightly'" in cli("trigger", "nightly", check=2).stderr
    assert store.run(run.run_id).state == "SUCCEEDED"

    cli("deploy", "pipeline.yaml", check=0)
    assert "purged 1 runs" in cli("drop", "nightly", "--purge", check=0).stdout
    assert store.runs(10, "nightly") == []


def test_serve_runs_triggers_and_stops_cleanly_on_sigterm(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    pids = tmp_path / "pids"
    write_pipeline({"name": "svc", "jobs": [sh("slow", f"echo $$ >> {pids}; sleep 300")]})
    cli("deploy", "pipeline.yaml", check=0)
    serve = start_serve(tmp_path)
    try:
        store = Store(store_url(tmp_path))
        wait_until(lambda: Deployments(store).lease_holder("scheduler", datetime.now(UTC)) is not None)
        assert "run requested from the scheduler service" in cli("trigger", "svc", check=0).stdout
        wait_until(lambda: pids.exists())
        serve.send_signal(signal.SIGTERM)
        out, _ = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert serve.returncode == 0, out
    assert "stopping: cancelling 1 running run(s)" in out and "[svc] slow CANCELLED" in out
    assert not process_alive(int(pids.read_text()))
    run = store.runs(1, "svc")[0]
    assert run.state == "CANCELLED"
    assert [f.action for f in Deployments(store).fires("svc")] == ["TAKEN", "STARTED"]


def test_kill_9_of_serve_loses_nothing_and_leaves_no_process(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    pids = tmp_path / "pids"
    write_pipeline({"name": "svc", "jobs": [sh("first", "echo one"),
                                            sh("slow", f"echo $$ >> {pids}; sleep 300", after=["first"])]})
    cli("deploy", "pipeline.yaml", check=0)
    serve = start_serve(tmp_path)
    try:
        store = Store(store_url(tmp_path))
        wait_until(lambda: Deployments(store).lease_holder("scheduler", datetime.now(UTC)) is not None)
        cli("trigger", "svc", check=0)
        wait_until(lambda: pids.exists())
        serve.kill()
        serve.wait()
    finally:
        if serve.poll() is None:
            serve.kill()
    job = int(pids.read_text())
    assert process_alive(job)
    run = store.runs(1, "svc")[0]
    assert run.state == "RUNNING"
    assert {t.task: t.state for t in store.tasks(run.run_id)} == {"first": "SUCCEEDED", "slow": "RUNNING"}

    again = start_serve(tmp_path)
    try:
        wait_until(lambda: store.run(run.run_id).state == "CANCELLED")
        wait_until(lambda: not process_alive(job))
        again.send_signal(signal.SIGTERM)
        out, _ = again.communicate(timeout=60)
    finally:
        if again.poll() is None:
            again.kill()
    assert f"run {run.run_id} of svc: its jobgraph process died" in out
    slow = next(a for a in store.attempts(run.run_id) if a.task == "slow")
    assert slow.status == "CANCELLED" and (slow.error or "").startswith("orchestrator lost")


def test_two_services_never_start_the_same_run_twice(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "svc", "overlap": "allow", "jobs": [sh("a", "sleep 0.5")]})
    cli("deploy", "pipeline.yaml", check=0)
    services = [start_serve(tmp_path), start_serve(tmp_path)]
    try:
        store = Store(store_url(tmp_path))
        wait_until(lambda: Deployments(store).lease_holder("scheduler", datetime.now(UTC)) is not None)
        for _ in range(3):
            cli("trigger", "svc", check=0)
        wait_until(lambda: [r.state for r in store.runs(10, "svc")] == ["SUCCEEDED"] * 3)
        time.sleep(1)
        for service in services:
            service.send_signal(signal.SIGTERM)
        outputs = [service.communicate(timeout=60)[0] for service in services]
    finally:
        for service in services:
            if service.poll() is None:
                service.kill()
    assert len(store.runs(10, "svc")) == 3
    assert sum("waiting: another scheduler holds the lease" in out for out in outputs) == 1
    assert [f.action for f in Deployments(store).fires("svc")].count("STARTED") == 3


def test_drain_lets_running_runs_finish(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    started = tmp_path / "started"
    write_pipeline({"name": "svc", "jobs": [sh("a", f"touch {started}; sleep 1")]})
    cli("deploy", "pipeline.yaml", check=0)
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    serve = subprocess.Popen([sys.executable, "-m", "jobgraph", "serve", "--tick", "0.1", "--drain"], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        store = Store(store_url(tmp_path))
        wait_until(lambda: Deployments(store).lease_holder("scheduler", datetime.now(UTC)) is not None)
        cli("trigger", "svc", check=0)
        wait_until(started.exists)
        serve.send_signal(signal.SIGTERM)
        out, _ = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert "stopping: draining 1 running run(s)" in out
    assert store.runs(1, "svc")[0].state == "SUCCEEDED"


def test_the_seed_pipeline_on_a_postgresql_store(tmp_path: Path, cli: Cli, any_store_url: str) -> None:
    for name in ("jobconfig.json", "pipeline.yaml"):
        (tmp_path / name).write_text((Path(__file__).parents[2] / "examples" / "seed" / name).read_text())
    cli("run", "pipeline.yaml", "--store", any_store_url, check=0)
    jobs = cli("stats", "jobs_run_stats", "--store", any_store_url, check=0).stdout
    assert jobs.count(" DONE ") == 6
    tasks = cli("stats", "task_logging_stats", "--store", any_store_url, check=0).stdout
    assert tasks.count(" SUCCEEDED ") == 6
