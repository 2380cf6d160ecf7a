"""`jobgraph run` and `jobgraph retry` as users meet them: the closing summary, one writer per run, a finished
attempt is a success, which definition a retry reruns."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from jobgraph.store import Store
from tests.conftest import Cli, WritePipeline, sh, store_url


def test_a_big_runs_summary_shows_its_rows_failures_first(cli: Cli, write_pipeline: WritePipeline) -> None:
    jobs = [sh(f"ok_{i}", "true") for i in range(50)] + [sh("broken", "exit 3")]
    write_pipeline({"jobs": jobs})
    out = cli("run", "pipeline.yaml", check=1).stdout
    summary = out[out.index("run ", out.index(" FAILED\n")):]
    rows = [line for line in summary.splitlines() if line.startswith("│")]
    assert len(rows) == 40
    assert "broken" in rows[0] and "FAILED" in rows[0]
    assert all("SUCCEEDED" in row for row in rows[1:])
    assert "1 failed, 50 succeeded" in summary and "jobgraph show" in summary


def test_a_container_runner_without_an_engine_stops_before_anything_runs(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    marker = tmp_path / "ran"
    path = write_pipeline({"jobs": [sh("first", f"touch {marker}", runner="local"),
                                    {"name": "boxed", "image": "busybox", "runner": "docker", "after": ["first"]}]})
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"),
           "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    result = subprocess.run([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "runner docker: no container engine answers" in result.stderr and "nothing was run" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    with Store(store_url(tmp_path)) as records:
        assert records.runs() == []


def test_version(cli: Cli) -> None:
    out = cli("--version", check=0).stdout
    assert out.startswith("jobgraph ") and out.split()[1][0].isdigit()


def retry_processes(tmp_path: Path, run_id: str, url: str, count: int,
                    release: Path, *options: str) -> list[subprocess.CompletedProcess[str]]:
    """Start `count` `jobgraph retry RUN [OPTIONS]` at once; once all but one have ended (or after a minute), touch
    `release`."""
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    processes = [subprocess.Popen([sys.executable, "-m", "jobgraph", "retry", run_id, "--store", url, *options],
                                  cwd=tmp_path,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(count)]
    deadline = time.monotonic() + 60
    while sum(p.poll() is None for p in processes) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    release.touch()
    finished = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        finished.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return finished


def test_four_retries_at_once_run_the_failed_job_once(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, any_store_url: str) -> None:
    url = any_store_url
    count, gate, release = tmp_path / "count", tmp_path / "gate", tmp_path / "release"
    write_pipeline({"jobs": [
        sh("first", "true"),
        sh("flaky", f"echo ran >> {count}; [ -e {gate} ] || exit 3; while [ ! -e {release} ]; do sleep 0.05; done",
           after=["first"]),
    ]})
    cli("run", "pipeline.yaml", "--store", url, check=1)
    store = Store(url)
    run_id = store.runs(1)[0].run_id
    gate.touch()

    results = retry_processes(tmp_path, run_id, url, 4, release)
    outputs = [r.stdout + r.stderr for r in results]
    assert sorted(r.returncode for r in results) == [0, 2, 2, 2], outputs
    assert not any("IntegrityError" in o or "Traceback" in o for o in outputs), outputs
    for loser in (r for r in results if r.returncode == 2):
        assert f"run {run_id} is already being retried by " in loser.stderr, loser.stderr
        assert "nothing was run" in loser.stderr
    assert count.read_text().splitlines() == ["ran", "ran"]
    run = store.run(run_id)
    assert run.state == "SUCCEEDED" and run.run_attempt == 2
    assert {t.task: (t.state, t.attempts) for t in store.tasks(run_id)} == {
        "first": ("SUCCEEDED", 1), "flaky": ("SUCCEEDED", 2)}
    assert [(a.task, a.attempt, a.status) for a in store.attempts(run_id)] == [
        ("first", 1, "DONE"), ("flaky", 1, "FAILED"), ("flaky", 2, "DONE")]
    store.close()


def kill_9_after_attempt_done(url: str, run_id: str, job: str, task_state: str, run_state: str) -> None:
    """Leave the rows as a kill -9 between "attempt DONE" and "job SUCCEEDED" does (before or after recovery)."""
    dead_owner = f"{socket.gethostname()}:{os.getpid()}:not-this-process"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE runs SET state = :state, finished_at = NULL, owner = :owner WHERE run_id = :run"),
                     {"state": run_state, "owner": dead_owner, "run": run_id})
        conn.execute(text("UPDATE task_runs SET state = :state, finished_at = NULL, return_value = NULL, "
                          "duration_secs = NULL WHERE run_id = :run AND task = :task"),
                     {"state": task_state, "run": run_id, "task": job})
        conn.execute(text("UPDATE task_runs SET state = :state, attempts = 0, started_at = NULL, "
                          "finished_at = NULL, duration_secs = NULL WHERE run_id = :run AND task <> :task"),
                     {"state": "PENDING" if run_state == "RUNNING" else "CANCELLED", "run": run_id, "task": job})
        conn.execute(text("DELETE FROM attempts WHERE run_id = :run AND task <> :task"), {"run": run_id, "task": job})
    engine.dispose()


@pytest.mark.parametrize(("task_state", "run_state"), [("RUNNING", "RUNNING"), ("CANCELLED", "CANCELLED")],
                         ids=["recovered-by-this-retry", "recovered-before"])
def test_a_job_whose_last_attempt_ended_done_is_not_run_again(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, task_state: str, run_state: str) -> None:
    count = tmp_path / "count"
    write_pipeline({"jobs": [sh("done", f"echo ran >> {count}"), sh("next", f"echo next >> {count}", after=["done"])]})
    cli("run", "pipeline.yaml", check=0)
    url = store_url(tmp_path)
    store = Store(url)
    run_id = store.runs(1)[0].run_id
    kill_9_after_attempt_done(url, run_id, "done", task_state, run_state)
    count.write_text("ran\n")

    retried = cli("retry", run_id, check=0)
    assert "keeping 1 succeeded jobs" in retried.stdout
    assert count.read_text().splitlines() == ["ran", "next"]
    assert {t.task: (t.state, t.attempts) for t in store.tasks(run_id)} == {
        "done": ("SUCCEEDED", 1), "next": ("SUCCEEDED", 1)}
    assert store.run(run_id).state == "SUCCEEDED"
    store.close()


def test_retry_says_which_definition_it_reruns_and_takes_a_repaired_file(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    count = tmp_path / "count"
    write_pipeline({"name": "nightly", "jobs": [
        sh("extract", f"echo extract >> {count}"),
        sh("load", f"echo load >> {count}; exit 5", after=["extract"]),
    ]})
    cli("deploy", "pipeline.yaml", check=0)
    cli("trigger", "nightly", check=1)
    store = Store(store_url(tmp_path))
    run = store.run(store.runs(1)[0].run_id)
    assert run.version is not None

    again = cli("retry", run.run_id, check=1)
    assert f"definition: the run's stored snapshot of nightly, pipeline version {run.version}" in again.stdout

    write_pipeline({"name": "nightly", "jobs": [
        sh("extract", f"echo extract >> {count}"),
        sh("load_all", f"echo load >> {count}", after=["extract"]),
        sh("report", "true", after=["extract"]),
    ]}, name="renamed.yaml")
    refused = cli("retry", run.run_id, "--file", "renamed.yaml", check=2)
    assert f"renamed.yaml, job 'load': job 'load' of run {run.run_id} is missing from the file" in refused.stderr
    assert f"renamed.yaml, job 'load_all': job 'load_all' is not in run {run.run_id}" in refused.stderr
    assert f"renamed.yaml, job 'report': job 'report' is not in run {run.run_id}" in refused.stderr
    assert "nothing was run." in refused.stderr and "Traceback" not in refused.stderr

    write_pipeline({"name": "nightly", "jobs": [
        sh("extract", f"echo extract >> {count}"),
        sh("load", f"echo load >> {count}"),
    ]}, name="unchained.yaml")
    refused = cli("retry", run.run_id, "--file", "unchained.yaml", check=2)
    assert f"job 'load', field 'after': after is [] in the file but ['extract'] in run {run.run_id}" in refused.stderr
    assert store.run(run.run_id).run_attempt == 2
    assert count.read_text().splitlines() == ["extract", "load", "load"]

    write_pipeline({"name": "nightly", "jobs": [
        sh("extract", f"echo extract >> {count}"),
        sh("load", f"echo repaired >> {count}", after=["extract"]),
    ]}, name="repaired.yaml")
    repaired = cli("retry", run.run_id, "--file", "repaired.yaml", check=0)
    assert "definition: repaired.yaml (the run's jobs and edges, repaired)" in repaired.stdout
    assert count.read_text().splitlines() == ["extract", "load", "load", "repaired"]
    after = store.run(run.run_id)
    assert (after.state, after.run_attempt, after.version) == ("SUCCEEDED", 3, None)
    assert "echo repaired" in after.snapshot
    store.close()


def test_a_bad_store_patience_is_a_clear_error_and_nothing_runs(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    write_pipeline({"jobs": [sh("a", f"touch {marker}")]})
    monkeypatch.setenv("JOBGRAPH_STORE_PATIENCE", "soon")
    result = cli("run", "pipeline.yaml", check=2)
    assert "field 'JOBGRAPH_STORE_PATIENCE': 'soon' is not a number of seconds from 0 to 86400" in result.stderr
    assert "nothing was run." in result.stderr and not marker.exists()
    with Store(store_url(tmp_path)) as records:
        assert records.runs() == []


def test_a_secret_missing_from_the_environment_is_an_error_naming_the_file_and_nothing_runs(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JG_TEST_UNSET_SECRET", raising=False)
    monkeypatch.delenv("JG_TEST_UNSET_HOOK", raising=False)
    marker = tmp_path / "ran"
    write_pipeline({"notify": [{"webhook_secret": "JG_TEST_UNSET_HOOK"}],
                    "jobs": [sh("a", f"touch {marker}", secrets=["JG_TEST_UNSET_SECRET"])]})
    err = cli("run", "pipeline.yaml", check=2).stderr
    assert ("error: pipeline.yaml, job 'a', field 'secrets': secret JG_TEST_UNSET_SECRET is not set in jobgraph's "
            "environment") in err
    monkeypatch.setenv("JG_TEST_UNSET_SECRET", "x")
    err = cli("run", "pipeline.yaml", check=2).stderr
    assert ("error: pipeline.yaml, field 'notify.0.webhook_secret': JG_TEST_UNSET_HOOK is not set in jobgraph's "
            "environment") in err
    assert "Traceback" not in err and not marker.exists()
    with Store(store_url(tmp_path)) as records:
        assert records.runs() == []
