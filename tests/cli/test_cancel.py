"""`jobgraph cancel` from another process, as users meet it: the run's own jobgraph (`run`, `serve`) cancels it as
Ctrl-C there would; a run whose jobgraph died is closed at once; an ended or unknown run is a clear error."""

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
from tests.conftest import Cli, WritePipeline, process_alive, sh


def slow_pipeline(tmp_path: Path, write_pipeline: WritePipeline, name: str = "p", gate: Path | None = None) -> Path:
    """Two jobs that sleep for minutes (their pids written to tmp_path/pids), one after them, and a finalizer
    (which waits for `gate` to exist, if given)."""
    pids, final = tmp_path / "pids", tmp_path / "final"
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done; " if gate else ""
    return write_pipeline({"name": name, "jobs": [
        sh("slow1", f"sleep 300 & echo $! >> {pids}; wait"), sh("slow2", f"echo $$ >> {pids}; sleep 300"),
        sh("later", "true", after=["slow1"])], "finalizer": {"image": "sh", "args": [f"{wait}echo done > {final}"]}})


def start_jobgraph(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """The real `jobgraph ARGS` in the background, with the `cli` fixture's home."""
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    return subprocess.Popen([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def job_pids(tmp_path: Path, count: int = 2) -> list[int]:
    """Once the jobs have written `count` pids: those pids."""
    pids = tmp_path / "pids"
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) >= count)
    return [int(pid) for pid in pids.read_text().split()]


def assert_cancelled_by_request(store: Store, run_id: str, tmp_path: Path, pids: list[int]) -> None:
    """The run ended CANCELLED with who asked recorded, its jobs killed and recorded, its finalizer run."""
    for pid in pids:
        assert not process_alive(pid), f"job process {pid} was left behind"
    run = store.run(run_id)
    assert run.state == "CANCELLED" and run.finished_at is not None
    assert run.cancel_requested_at is not None and "(jobgraph cancel, pid " in (run.cancel_requested_by or "")
    assert {t.task: t.state for t in store.tasks(run_id)} == {
        "slow1": "CANCELLED", "slow2": "CANCELLED", "later": "CANCELLED", "finalizer": "SUCCEEDED"}
    assert {(a.task, a.status) for a in store.attempts(run_id)} == {
        ("slow1", "CANCELLED"), ("slow2", "CANCELLED"), ("finalizer", "DONE")}
    assert all(a.finished_at is not None for a in store.attempts(run_id))
    assert (tmp_path / "final").read_text() == "done\n"


def test_a_run_cancelled_from_another_terminal_ends_as_ctrl_c_ends_it(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, any_store_url: str) -> None:
    url = any_store_url
    path = slow_pipeline(tmp_path, write_pipeline)
    running = start_jobgraph(tmp_path, "run", str(path), "--store", url)
    try:
        pids = job_pids(tmp_path)
        store = Store(url)
        run_id = store.runs(1)[0].run_id
        assert store.run(run_id).state == "RUNNING"
        started = time.monotonic()
        cancelled = cli("cancel", run_id[:8], "--store", url, check=0)
        took = time.monotonic() - started
        out, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 130, out + err
    assert f"run {run_id}: cancel requested by " in err and "; cancelling it" in err
    assert f"run {run_id} of p: cancel requested by " in cancelled.stdout
    assert f"run {run_id} ended CANCELLED at " in cancelled.stdout
    assert "Traceback" not in cancelled.stderr + err
    assert_cancelled_by_request(store, run_id, tmp_path, pids)
    assert str(os.getpid()) not in (store.run(run_id).cancel_requested_by or "")  # the cancel process asked
    print(f"jobgraph cancel, from its start to the run's end: {took:.2f}s")
    store.close()


def test_cancelling_an_ended_or_unknown_run_is_a_clear_error_and_changes_nothing(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, any_store_url: str) -> None:
    url = any_store_url
    write_pipeline({"jobs": [sh("quick", "true")]})
    cli("run", "pipeline.yaml", "--store", url, check=0)
    store = Store(url)
    before = store.run(store.runs(1)[0].run_id)

    refused = cli("cancel", before.run_id, "--store", url, check=2)
    assert f"error: run {before.run_id} of p has already ended: SUCCEEDED at " in refused.stderr
    assert "nothing was cancelled" in refused.stderr and "Traceback" not in refused.stderr
    assert store.run(before.run_id) == before
    assert {t.task: t.state for t in store.tasks(before.run_id)} == {"quick": "SUCCEEDED"}

    unknown = cli("cancel", "zzz", "--store", url, "--no-wait", check=2)
    assert "error: no run with id 'zzz'" in unknown.stderr and "Traceback" not in unknown.stderr
    store.close()


def test_a_run_whose_jobgraph_was_killed_is_closed_at_once_and_leaves_no_process(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, any_store_url: str) -> None:
    url = any_store_url
    path = slow_pipeline(tmp_path, write_pipeline)
    running = start_jobgraph(tmp_path, "run", str(path), "--store", url)
    pids = job_pids(tmp_path)
    running.kill()  # kill -9: its jobs live on, the run stays RUNNING
    running.communicate()
    assert any(process_alive(pid) for pid in pids)
    store = Store(url)
    run_id = store.runs(1)[0].run_id
    assert store.run(run_id).state == "RUNNING"

    cancelled = cli("cancel", run_id, "--store", url, check=0)
    assert f"run {run_id}: its jobgraph process (" in cancelled.stderr
    assert "had died, so it was closed here: killed 4 leftover process(es)" in cancelled.stderr
    assert f"run {run_id} ended CANCELLED" in cancelled.stdout
    for pid in pids:
        assert not process_alive(pid), f"job process {pid} was left behind"
    run = store.run(run_id)
    assert run.state == "CANCELLED" and "(jobgraph cancel, pid " in (run.cancel_requested_by or "")
    slow = [a for a in store.attempts(run_id) if a.task.startswith("slow")]
    assert [a.status for a in slow] == ["CANCELLED", "CANCELLED"]
    assert all((a.error or "").startswith("orchestrator lost") and "cancelled at the request of " in (a.error or "")
               for a in slow)
    assert {t.task: t.state for t in store.tasks(run_id)}["later"] == "CANCELLED"
    store.close()


def test_a_run_of_serve_is_cancelled_from_the_command_line_and_serve_goes_on(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    url = f"sqlite:///{tmp_path / '.jobgraph' / 'jobgraph.db'}"
    slow_pipeline(tmp_path, write_pipeline, name="svc")
    cli("deploy", "pipeline.yaml", check=0)
    serve = start_jobgraph(tmp_path, "serve", "--tick", "0.1")
    try:
        store = Store(url)
        wait_until(lambda: Deployments(store).lease_holder("scheduler", datetime.now(UTC)) is not None)
        assert "run requested from the scheduler service" in cli("trigger", "svc", check=0).stdout
        pids = job_pids(tmp_path)
        run_id = store.runs(1, "svc")[0].run_id
        cancelled = cli("cancel", run_id, check=0)
        assert f"run {run_id} ended CANCELLED" in cancelled.stdout
        assert serve.poll() is None, "serve must go on serving"
        assert_cancelled_by_request(store, run_id, tmp_path, pids)

        (tmp_path / "pids").unlink()
        cli("trigger", "svc", check=0)  # the service still runs what it is asked to
        job_pids(tmp_path)
        serve.send_signal(signal.SIGTERM)
        out, err = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert serve.returncode == 0, out + err
    assert f"run {run_id}: cancel requested by " in out
    assert [run.state for run in store.runs(2, "svc")] == ["CANCELLED", "CANCELLED"]
    store.close()


def test_two_cancels_at_once_both_end_well_and_one_request_is_recorded(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, any_store_url: str) -> None:
    url = any_store_url
    gate = tmp_path / "gate"
    path = slow_pipeline(tmp_path, write_pipeline, gate=gate)  # the run stays RUNNING until both have asked
    running = start_jobgraph(tmp_path, "run", str(path), "--store", url)
    try:
        pids = job_pids(tmp_path)
        store = Store(url)
        run_id = store.runs(1)[0].run_id
        cancels = [start_jobgraph(tmp_path, "cancel", run_id, "--store", url) for _ in range(2)]
        asked = [(c.stdout.readline(), c.stdout.readline()) for c in cancels if c.stdout]
        assert all(waiting.startswith("waiting for its jobgraph process") for _, waiting in asked), asked
        gate.touch()
        ended = []
        for (request, waiting), cancel in zip(asked, cancels, strict=True):
            rest, errors = cancel.communicate(timeout=90)
            ended.append((cancel.pid, request + waiting + rest, errors, cancel.returncode))
        out, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 130, out + err
    assert [code for *_, code in ended] == [0, 0], ended
    run = store.run(run_id)
    askers = [pid for pid, *_ in ended if (run.cancel_requested_by or "").endswith(f"(jobgraph cancel, pid {pid})")]
    assert len(askers) == 1, run.cancel_requested_by
    for _pid, stdout, _stderr, _code in ended:
        assert f"cancel requested by {run.cancel_requested_by} at " in stdout  # both name the one request
        assert f"run {run_id} ended CANCELLED" in stdout
    assert err.count("cancel requested by ") == 1 and f"pid {askers[0]})" in err
    assert_cancelled_by_request(store, run_id, tmp_path, pids)
    store.close()
