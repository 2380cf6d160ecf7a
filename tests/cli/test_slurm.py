"""Pipelines on the real Slurm cluster through the `jobgraph` command, recorded as the local runner records them."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobgraph.store import Store
from tests.conftest import SEED, Cli, WritePipeline, sh, store_url

pytestmark = pytest.mark.usefixtures("slurm")


def test_the_seed_pipeline_runs_as_slurm_jobs_and_fills_the_seed_tables(tmp_path: Path, cli: Cli) -> None:
    for name in ("jobconfig.json", "pipeline.yaml"):
        shutil.copy(SEED / name, tmp_path / name)
    run = cli("run", "pipeline.yaml", "--runner", "slurm", check=0)
    assert "t_myjob_6 SUCCEEDED attempt 1" in run.stdout
    with sqlite3.connect(tmp_path / "results.db") as db:
        for i in range(1, 7):
            assert db.execute(f"select count(*) from results_{i}").fetchone() == (1,)
    with Store(store_url(tmp_path)) as records:
        [summary] = records.runs()
        columns, rows = records.view("jobs_run_stats", 100)
        status = columns.index("job_status")
        assert len(rows) == 6 and {row[status] for row in rows} == {"DONE"}
        assert len(records.view("task_logging_stats", 100)[1]) == 6
        assert summary.state == "SUCCEEDED"
        handles = [(a.runner, a.backend_ref) for a in records.attempts(summary.run_id)]
        assert len(handles) == 6 and all(r == "slurm" and ref and ref.isdigit() for r, ref in handles)
    queue = subprocess.run(["squeue", "-h", "-o", "%k"], capture_output=True, text=True, timeout=30).stdout
    assert summary.run_id not in queue


def test_bad_slurm_settings_are_refused_before_anything_runs(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"runners": {"slurm": {"poll_interval": 0, "partiton": "debug",
                                          "extra_sbatch_args": ["--time=5"]}},
                    "jobs": [sh("a", f"touch {tmp_path}/ran", runner="slurm")]})
    result = cli("run", "pipeline.yaml", check=2)
    assert "field 'runners.slurm.poll_interval'" in result.stderr
    assert "field 'runners.slurm.partiton': unknown field" in result.stderr
    assert "field 'runners.slurm.extra_sbatch_args'" in result.stderr
    assert "nothing was run" in result.stderr and not (tmp_path / "ran").exists()


def test_a_job_slurm_can_never_start_is_an_error_and_is_cancelled(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"runners": {"slurm": {"poll_interval": 0.2, "extra_sbatch_args": ["--nodes=2"]}},
                    "jobs": [sh("too_big", "true", runner="slurm")]})
    result = cli("run", "pipeline.yaml", check=1, timeout=60)
    assert "Slurm will never start this job (Partition" in result.stdout  # PartitionConfig or PartitionNodeLimit
    with Store(store_url(tmp_path)) as records:
        [summary] = records.runs()
        [attempt] = records.attempts(summary.run_id)
        assert attempt.status == "ERROR"
    queue = subprocess.run(["squeue", "-h", "-o", "%k"], capture_output=True, text=True, timeout=30).stdout
    assert summary.run_id not in queue


REMOTE = {"name": "remote", "runners": {"slurm": {"poll_interval": 0.2}}}


def start_run(tmp_path: Path, path: Path, path_prefix: str = "") -> subprocess.Popen[str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "PATH": path_prefix + os.environ["PATH"]}
    return subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


def submitted(tmp_path: Path, task: str) -> tuple[str, str]:
    """(run id, Slurm job id) once the store holds the attempt's handle."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (tmp_path / ".jobgraph" / "jobgraph.db").exists():
            with Store(store_url(tmp_path)) as records:
                for run in records.runs():
                    for attempt in records.attempts(run.run_id, task):
                        if attempt.backend_ref:
                            return run.run_id, attempt.backend_ref
        time.sleep(0.1)
    raise AssertionError("the attempt was never submitted")


def slurm_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"], capture_output=True,
                         text=True, timeout=30).stdout.strip()
    return out or "GONE"


def wait_until_ended(job_id: str) -> None:
    """Slurm is done with the job (while no jobgraph watches it)."""
    deadline = time.monotonic() + 60
    while slurm_state(job_id) in ("PENDING", "RUNNING", "COMPLETING") and time.monotonic() < deadline:
        time.sleep(0.2)


def other_run(tmp_path: Path, cli: Cli) -> subprocess.CompletedProcess[str]:
    """The next `jobgraph run`, of another pipeline: its start recovers (and adopts) lost runs."""
    (tmp_path / "other.yaml").write_text("name: other\nimages: {sh: [sh, -c]}\njobs: [{name: x, image: sh, "
                                         "args: ['true']}]\n")
    return cli("run", "other.yaml", check=0, timeout=120)


def ended_while_jobgraph_was_down(tmp_path: Path, path: Path, cli: Cli, task: str) -> str:
    """Run `path`, kill -9 jobgraph once `task`'s Slurm job is submitted, let the job end, then start
    another run (which closes the lost one); the lost run's id."""
    run = start_run(tmp_path, path)
    run_id, job_id = submitted(tmp_path, task)
    run.kill()
    run.wait(timeout=30)
    wait_until_ended(job_id)
    other_run(tmp_path, cli)
    return run_id


def test_kill_9_mid_run_then_the_next_start_adopts_the_slurm_job_and_the_run_goes_on(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    marker = tmp_path / "marker"
    path = write_pipeline({**REMOTE, "jobs": [
        sh("long", f"sleep 4; echo ran >> {marker}", runner="slurm"),
        sh("after", f"echo after >> {marker}", after=["long"]),
        sh("broken", f"echo broken >> {tmp_path}/broken; exit 1"),
        sh("blocked", "true", after=["broken"])]})
    run = start_run(tmp_path, path)
    run_id, job_id = submitted(tmp_path, "long")
    deadline = time.monotonic() + 30
    while not (tmp_path / "broken").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # recorded FAILED, its dependent SKIPPED
    run.kill()
    run.wait(timeout=30)
    assert slurm_state(job_id) in ("PENDING", "RUNNING")  # nothing remote was killed
    result = other_run(tmp_path, cli)
    assert f"adopting what still runs remotely: long attempt 1 (slurm {job_id})" in result.stderr
    assert marker.read_text() == "ran\nafter\n"  # the Slurm job ran once, and the run went on after it
    assert (tmp_path / "broken").read_text() == "broken\n"  # what had failed before the crash is not rerun
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).state == "FAILED"
        states = {t.task: t.state for t in records.tasks(run_id)}
        assert states == {"long": "SUCCEEDED", "after": "SUCCEEDED", "broken": "FAILED", "blocked": "SKIPPED"}
        [long] = records.attempts(run_id, "long")
        assert (long.status, long.exit_code, long.backend_ref, long.run_attempt) == ("DONE", 0, job_id, 2)
        assert long.duration_secs is not None and long.duration_secs >= 4  # its real span, from its real start
        columns, rows = records.view("jobs_run_stats", 100)
        seen = {(row[columns.index("task_name")], row[columns.index("graph_run_attempt")]):
                row[columns.index("job_status")] for row in rows}
        assert seen[("long", 2)] == "DONE" and ("long", 1) not in seen  # the seed's row where it ended


def test_a_slurm_job_that_ended_while_jobgraph_was_down_is_recorded_with_its_real_exit_code(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({**REMOTE, "jobs": [sh("quick", "sleep 2; exit 7", runner="slurm")]})
    run_id = ended_while_jobgraph_was_down(tmp_path, path, cli, "quick")
    with Store(store_url(tmp_path)) as records:
        [quick] = records.attempts(run_id, "quick")
        assert (quick.status, quick.exit_code) == ("FAILED", 7)
        assert quick.duration_secs is not None and quick.duration_secs < 15  # its real end, not when adopted
        assert records.run(run_id).state == "FAILED"


def test_on_orchestrator_loss_cancel_cancels_the_slurm_job(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"runners": {"slurm": {"poll_interval": 0.2, "on_orchestrator_loss": "cancel"}},
                           "jobs": [sh("long", "sleep 300", runner="slurm")]})
    run = start_run(tmp_path, path)
    run_id, job_id = submitted(tmp_path, "long")
    run.kill()
    run.wait(timeout=30)
    result = other_run(tmp_path, cli)
    assert "cancelled 1 remote attempt(s)" in result.stderr
    assert slurm_state(job_id) in ("GONE", "CANCELLED")
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).state == "CANCELLED"
        assert [a.status for a in records.attempts(run_id)] == ["CANCELLED"]


def test_a_serve_that_starts_adopts_a_lost_runs_slurm_job_alongside_its_schedule(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    marker = tmp_path / "marker"
    path = write_pipeline({**REMOTE, "jobs": [sh("long", f"sleep 3; echo ran >> {marker}", runner="slurm")]})
    run = start_run(tmp_path, path)
    run_id, job_id = submitted(tmp_path, "long")
    run.kill()
    run.wait(timeout=30)
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    serve = subprocess.Popen([sys.executable, "-m", "jobgraph", "serve", "--tick", "0.2"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        state = "RUNNING"
        while state != "SUCCEEDED" and time.monotonic() < deadline:
            time.sleep(0.2)
            with Store(store_url(tmp_path)) as records:
                state = records.run(run_id).state
        serve.terminate()
        out, _ = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert f"resuming run {run_id} of remote, adopting 1 remote attempt(s)" in out
    assert state == "SUCCEEDED" and marker.read_text() == "ran\n"
    with Store(store_url(tmp_path)) as records:
        [long] = records.attempts(run_id, "long")
        assert (long.status, long.backend_ref) == ("DONE", job_id)


def test_kill_9_after_slurm_took_the_job_but_before_its_id_was_recorded_still_adopts_it(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "sbatch").write_text(f'#!/bin/sh\n{shutil.which("sbatch")} "$@"\ncode=$?\nsleep 30\nexit $code\n')
    (wrappers / "sbatch").chmod(0o755)
    ledger = tmp_path / "ledger"
    path = write_pipeline({**REMOTE, "jobs": [sh("once", f"sleep 2; echo $SLURM_JOB_ID >> {ledger}", runner="slurm")]})
    run = start_run(tmp_path, path, f"{wrappers}:")
    deadline, taken = time.monotonic() + 60, False
    while not taken and time.monotonic() < deadline:
        time.sleep(0.1)
        if not (tmp_path / ".jobgraph" / "jobgraph.db").exists():
            continue
        with Store(store_url(tmp_path)) as records:
            runs = records.runs()
        queue = subprocess.run(["squeue", "-h", "--states=all", "--name=jobgraph.once", "-O", "Comment:"],
                               capture_output=True, text=True, timeout=30).stdout
        taken = bool(runs) and f"jobgraph:{runs[0].run_id}/once/1" in queue
    run.kill()  # sbatch answered Slurm's id to nobody: the store has the attempt, not its handle
    run.wait(timeout=30)
    with Store(store_url(tmp_path)) as records:
        [summary] = records.runs()
        [attempt] = records.attempts(summary.run_id)
        assert attempt.status == "RUNNING" and attempt.backend_ref is None
    result = other_run(tmp_path, cli)
    assert "adopting what still runs remotely: once attempt 1 (slurm " in result.stderr
    deadline = time.monotonic() + 30
    while not ledger.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with Store(store_url(tmp_path)) as records:
        [attempt] = records.attempts(summary.run_id)
        assert (attempt.status, attempt.backend_ref) == ("DONE", ledger.read_text().split()[0])
        assert records.run(summary.run_id).state == "SUCCEEDED"
    assert len(ledger.read_text().split()) == 1  # it ran once


def test_on_orchestrator_loss_cancel_keeps_the_real_end_of_a_job_that_finished_meanwhile(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    ledger = tmp_path / "ledger"
    path = write_pipeline({"runners": {"slurm": {"poll_interval": 0.2, "on_orchestrator_loss": "cancel"}},
                           "jobs": [sh("quick", f"sleep 2; echo ran >> {ledger}", runner="slurm")]})
    run_id = ended_while_jobgraph_was_down(tmp_path, path, cli, "quick")
    with Store(store_url(tmp_path)) as records:
        [quick] = records.attempts(run_id, "quick")
        assert (quick.status, quick.exit_code) == ("DONE", 0)  # its real end, not CANCELLED
        assert quick.duration_secs is not None and quick.duration_secs < 15
        assert {t.task: t.state for t in records.tasks(run_id)} == {"quick": "SUCCEEDED"}
    assert ledger.read_text() == "ran\n"  # and it is not run again
