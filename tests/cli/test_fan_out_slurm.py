"""A fanned-out job's copies as Slurm jobs: each its own batch job, adopted after a kill -9 like any job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jobgraph.store import Store
from tests.cli.test_slurm import REMOTE, other_run, slurm_state, start_run, submitted
from tests.conftest import Cli, WritePipeline, sh, store_url

pytestmark = pytest.mark.usefixtures("slurm")


def test_kill_9_mid_fan_out_then_the_next_start_adopts_the_copies_slurm_jobs(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    marker = tmp_path / "marker"
    path = write_pipeline({**REMOTE, "jobs": [
        sh("each", f"sleep 3; echo {{{{ item }}}} >> {marker}", runner="slurm", for_each=["a", "b"]),
        sh("after", f"echo after >> {marker}", after=["each"])]})
    run = start_run(tmp_path, path)
    run_id, first = submitted(tmp_path, "each[0]")
    _, second = submitted(tmp_path, "each[1]")
    run.kill()
    run.wait(timeout=30)
    assert slurm_state(first) in ("PENDING", "RUNNING") and slurm_state(second) in ("PENDING", "RUNNING")
    result = other_run(tmp_path, cli)
    assert f"each[0] attempt 1 (slurm {first})" in result.stderr
    deadline = time.monotonic() + 60
    while "after" not in (marker.read_text() if marker.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(marker.read_text().split()) == ["a", "after", "b"]  # each copy ran once, then its dependent
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).state == "SUCCEEDED"
        states = {t.task: t.state for t in records.tasks(run_id)}
        assert states == {"each": "SUCCEEDED", "each[0]": "SUCCEEDED", "each[1]": "SUCCEEDED", "after": "SUCCEEDED"}
        refs = {a.task: a.backend_ref for a in records.attempts(run_id) if a.task.startswith("each[")}
        assert refs == {"each[0]": first, "each[1]": second}


def test_on_orchestrator_loss_cancel_cancels_every_copys_slurm_job(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"runners": {"slurm": {"poll_interval": 0.2, "on_orchestrator_loss": "cancel"}},
                           "jobs": [sh("each", "sleep 300 # {{ item }}", runner="slurm", for_each=[1, 2])]})
    run = start_run(tmp_path, path)
    run_id, first = submitted(tmp_path, "each[0]")
    _, second = submitted(tmp_path, "each[1]")
    run.kill()
    run.wait(timeout=30)
    result = other_run(tmp_path, cli)
    assert "cancelled 2 remote attempt(s)" in result.stderr
    assert slurm_state(first) in ("GONE", "CANCELLED") and slurm_state(second) in ("GONE", "CANCELLED")
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).state == "CANCELLED"
        assert sorted(a.status for a in records.attempts(run_id)) == ["CANCELLED", "CANCELLED"]
