"""Pipelines on the real Slurm cluster through the `jobgraph` command, recorded as the local runner records them."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
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
