"""Deployed pipelines and `jobgraph serve` end to end: versions, suspend/resume, drop, trigger (with and without a
live service), schedules refused at deploy, SIGTERM, kill -9, and a standby service taking over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from tests.conftest import Cli, WritePipeline, process_alive, sh, store_url


def wait_until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def start_jobgraph(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """The real `jobgraph` in the background, on the `cli` fixture's store."""
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    env.pop("JOBGRAPH_STORE", None)
    return subprocess.Popen([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start_serve(tmp_path: Path) -> subprocess.Popen[str]:
    return start_jobgraph(tmp_path, "serve", "--tick", "0.1")


def holder_pid(store: Store) -> int | None:
    """The pid of the service holding the lease, if one does."""
    holder = Deployments(store).lease_holder("scheduler", datetime.now(UTC))
    return None if holder is None else int(holder.split(":")[1])


def test_deploy_versions_suspend_resume_and_drop(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "nightly", "schedule": "USING CRON 0 9 * * * Europe/Paris", "jobs": [sh("a", "true")]})
    before = datetime.now(UTC)
    first = cli("deploy", "pipeline.yaml", check=0).stdout
    store = Store(store_url(tmp_path))
    deployments = Deployments(store)
    upcoming = deployments.get("NIGHTLY").next_fire_at
    assert upcoming is not None
    assert "deployed nightly: new version" in first and f"next run {upcoming:%Y-%m-%d %H:%M:%S} UTC" in first
    paris = upcoming.astimezone(ZoneInfo("Europe/Paris"))  # 09:00 in Paris, in winter or summer time
    assert (paris.hour, paris.minute) == (9, 0) and before < upcoming <= before + timedelta(hours=24)
    assert "unchanged version" in cli("deploy", "pipeline.yaml", check=0).stdout
    write_pipeline({"name": "nightly", "schedule": "USING CRON 0 9 * * * Europe/Paris", "jobs": [sh("a", "echo")]})
    assert "new version" in cli("deploy", "pipeline.yaml", check=0).stdout

    assert "nightly suspended" in cli("suspend", "nightly", check=0).stdout
    listed = cli("pipelines", check=0).stdout
    assert "SUSPENDED" in listed and "suspended by hand" in listed
    assert "nightly resumed; next run" in cli("resume", "nightly", check=0).stdout
    assert deployments.get("nightly").state == "ACTIVE"

    assert "nightly: no scheduler service is running on this store; running it here" in \
        cli("trigger", "nightly", check=0).stdout
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
        requested = cli("trigger", "svc", check=0).stdout
        assert "svc: run requested from the scheduler service" in requested
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
    assert run.state == "CANCELLED" and f"run {run.run_id} started" in requested
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
    started, gate = tmp_path / "started", tmp_path / "gate"  # the job runs on until serve says it drains
    write_pipeline({"name": "svc", "jobs": [sh("a", f"touch {started}; while [ ! -e {gate} ]; do sleep 0.05; done")]})
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
        assert serve.stdout is not None
        lines = [serve.stdout.readline()]
        while lines[-1] and "stopping:" not in lines[-1]:
            lines.append(serve.stdout.readline())
        gate.touch()
        serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert "stopping: draining 1 running run(s)" in lines[-1]
    assert store.runs(1, "svc")[0].state == "SUCCEEDED"


def test_the_seed_pipeline_on_a_postgresql_store(tmp_path: Path, cli: Cli, any_store_url: str) -> None:
    for name in ("jobconfig.json", "pipeline.yaml"):
        (tmp_path / name).write_text((Path(__file__).parents[2] / "examples" / "seed" / name).read_text())
    cli("run", "pipeline.yaml", "--store", any_store_url, check=0)
    jobs = cli("stats", "jobs_run_stats", "--store", any_store_url, check=0).stdout
    assert jobs.count(" DONE ") == 6
    tasks = cli("stats", "task_logging_stats", "--store", any_store_url, check=0).stdout
    assert tasks.count(" SUCCEEDED ") == 6


@pytest.mark.parametrize(("schedule", "why"), [
    ("0 0 30 2 *", "'0 0 30 2 *' never fires: its days of the month do not exist in its months"),
    ("0 0 * * * *", "'0 0 * * * *' has 6 cron fields: jobgraph takes five"),
    ("USING CRON 0 0 9 * * MON UTC", "'USING CRON 0 0 9 * * MON UTC' has 6 cron fields: jobgraph takes five"),
    ("@reboot", "'@reboot' is not a time"),
    ("0 0 L * *", "the day of month field 'L' uses 'L' (last), a croniter extension jobgraph does not take"),
    ("0 0 * * 1#2", "the day of week field '1#2' uses '#' (nth weekday)"),
])
def test_validate_and_deploy_refuse_schedules_that_never_fire_or_are_not_standard_cron(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, schedule: str, why: str) -> None:
    write_pipeline({"name": "nightly", "schedule": schedule, "jobs": [sh("a", "true")]})
    for command in ("validate", "deploy"):
        result = cli(command, "pipeline.yaml", check=2, timeout=20)
        assert f"error: pipeline.yaml, field 'schedule': {why}" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    assert Deployments(Store(store_url(tmp_path))).all() == []


def test_trigger_without_a_service_runs_here_and_says_so(tmp_path: Path, cli: Cli,
                                                         write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "svc", "jobs": [sh("a", "exit 3")]})
    cli("deploy", "pipeline.yaml", check=0)
    result = cli("trigger", "svc", check=1)
    assert "svc: no scheduler service is running on this store; running it here" in result.stdout
    assert "run requested" not in result.stdout
    store = Store(store_url(tmp_path))
    [summary] = store.runs(10, "svc")
    assert summary.state == "FAILED" and store.run(summary.run_id).owner is not None
    assert Deployments(store).fires("svc") == []


def test_trigger_after_the_service_died_runs_here_before_its_lease_expires(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "svc", "jobs": [sh("a", "true")]})
    cli("deploy", "pipeline.yaml", check=0)
    serve = start_serve(tmp_path)
    store = Store(store_url(tmp_path))
    try:
        wait_until(lambda: holder_pid(store) == serve.pid)
    finally:
        serve.kill()
        serve.wait()
    holder = Deployments(store).lease_holder("scheduler", datetime.now(UTC))
    assert holder is not None  # its lease runs on for 15 s: only its pid says it is dead
    result = cli("trigger", "svc", check=0)
    assert f"svc: no scheduler service is running on this store (its last one, {holder}, has died); running it " \
           "here" in result.stdout
    assert "run requested" not in result.stdout
    assert [r.state for r in store.runs(10, "svc")] == ["SUCCEEDED"]
    assert [f.action for f in Deployments(store).fires("svc")] == []


def test_a_standby_service_takes_over_from_a_killed_one_closes_its_run_and_honours_overlap(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    pids = tmp_path / "pids"
    write_pipeline({"name": "svc", "jobs": [sh("slow", f"echo $$ >> {pids}; sleep 300")]})
    cli("deploy", "pipeline.yaml", check=0)
    store = Store(store_url(tmp_path))
    first = start_serve(tmp_path)
    standby: subprocess.Popen[str] | None = None
    by_hand: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: holder_pid(store) == first.pid)
        first_label = Deployments(store).lease_holder("scheduler", datetime.now(UTC))
        standby = start_serve(tmp_path)
        started = cli("trigger", "svc", check=0).stdout
        lost = store.runs(1, "svc")[0]
        assert f"run {lost.run_id} started" in started
        wait_until(lambda: pids.exists())
        job = int(pids.read_text().split()[0])
        first.kill()
        first.wait()
        assert process_alive(job) and store.run(lost.run_id).state == "RUNNING"

        wait_until(lambda: holder_pid(store) == standby.pid)  # at once: the holder's pid is gone
        wait_until(lambda: store.run(lost.run_id).state == "CANCELLED")
        wait_until(lambda: not process_alive(job))
        assert {t.task: t.state for t in store.tasks(lost.run_id)} == {"slow": "CANCELLED"}

        by_hand = start_jobgraph(tmp_path, "run", "pipeline.yaml")
        wait_until(lambda: len(store.running_runs()) == 1)
        manual = store.running_runs()[0]
        skipped = cli("trigger", "svc", check=1).stdout
        assert f"svc: the scheduler service ({standby_label(store)}) skipped the request: the previous run " \
               f"{manual.run_id} is still running (overlap: skip)" in skipped
        by_hand.send_signal(signal.SIGTERM)
        by_hand.communicate(timeout=60)
        assert store.run(manual.run_id).state == "CANCELLED"
        assert "run requested from the scheduler service" in cli("trigger", "svc", check=0).stdout
        standby.send_signal(signal.SIGTERM)
        out, _ = standby.communicate(timeout=60)
    finally:
        for process in (first, standby, by_hand):
            if process is not None and process.poll() is None:
                process.kill()
    assert f"took over the lease from {first_label} (its process is gone)" in out
    assert f"run {lost.run_id} of svc: its jobgraph process died" in out
    assert "stopping: cancelling 1 running run(s)" in out
    states = {r.run_id: r.state for r in store.runs(10, "svc")}
    assert sorted(states.values()) == ["CANCELLED", "CANCELLED", "CANCELLED"]
    assert [f.action for f in Deployments(store).fires("svc")] == ["TAKEN", "STARTED", "TAKEN", "SKIPPED",
                                                                   "TAKEN", "STARTED"]
    assert all(not process_alive(int(pid)) for pid in pids.read_text().split())


def standby_label(store: Store) -> str:
    return Deployments(store).lease_holder("scheduler", datetime.now(UTC)) or "-"


def test_a_request_the_dying_service_never_took_is_withdrawn_and_run_here(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "svc", "jobs": [sh("a", "true")]})
    cli("deploy", "pipeline.yaml", check=0)
    store = Store(store_url(tmp_path))
    serve = start_serve(tmp_path)
    trigger: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: holder_pid(store) == serve.pid)
        serve.send_signal(signal.SIGSTOP)  # alive, holding its lease, but taking no request
        trigger = start_jobgraph(tmp_path, "trigger", "svc")
        wait_until(lambda: [f.action for f in Deployments(store).fires("svc")] == ["REQUESTED"])
        serve.kill()
        serve.wait()
        out, _ = trigger.communicate(timeout=60)
    finally:
        for process in (serve, trigger):
            if process is not None and process.poll() is None:
                process.kill()
    assert trigger.returncode == 0, out
    assert "svc: the scheduler service" in out and "stopped before taking the request (request withdrawn); " \
                                                   "running it here" in out
    assert [f.action for f in Deployments(store).fires("svc")] == ["WITHDRAWN"]
    assert [r.state for r in store.runs(10, "svc")] == ["SUCCEEDED"]


def test_a_misspelled_pipeline_name_suggests_the_deployed_one(cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "nightly", "jobs": [sh("a", "true")]})
    cli("deploy", "pipeline.yaml", check=0)
    assert "no deployed pipeline named 'nighty' (did you mean 'nightly'?)" in cli("suspend", "nighty", check=2).stderr


def test_pipelines_as_json_gives_the_apis_fields(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "nightly", "schedule": "USING CRON 0 9 * * * UTC", "jobs": [sh("a", "true")]})
    cli("deploy", "pipeline.yaml", check=0)
    write_pipeline({"name": "hourly", "schedule": "60 MINUTE", "jobs": [sh("a", "true")]})
    cli("deploy", "pipeline.yaml", check=0)
    cli("suspend", "hourly", check=0)
    cli("trigger", "nightly", check=0)
    store = Store(store_url(tmp_path))
    deployments = Deployments(store)
    listed = json.loads(cli("pipelines", "--format", "json", check=0).stdout)["pipelines"]
    by_name = {p["name"]: p for p in listed}
    assert set(by_name) == {"nightly", "hourly"}
    assert all(set(p) == {"name", "state", "version", "schedule", "last_run", "next_fire_at"} for p in listed)
    nightly, hourly = deployments.get("nightly"), deployments.get("hourly")
    assert (by_name["nightly"]["state"], by_name["nightly"]["version"]) == ("ACTIVE", nightly.version)
    assert nightly.next_fire_at is not None
    assert by_name["nightly"]["next_fire_at"] == nightly.next_fire_at.astimezone(UTC).isoformat().replace(
        "+00:00", "Z")
    run = store.runs(1, "nightly")[0]
    assert by_name["nightly"]["last_run"]["run_id"] == run.run_id and by_name["nightly"]["last_run"]["state"] == \
        "SUCCEEDED"
    assert (by_name["hourly"]["state"], by_name["hourly"]["version"]) == ("SUSPENDED", hourly.version)
    assert by_name["hourly"]["next_fire_at"] is None and by_name["hourly"]["last_run"] is None
    store.close()
