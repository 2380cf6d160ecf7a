"""`jobgraph plan`: what each job's first attempt would submit, on every runner, with nothing run or written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import yaml

from tests.conftest import WritePipeline, sh

SECRET = "s3cr3t-value-that-must-not-show"


def plan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "API_TOKEN": SECRET}
    return subprocess.run([sys.executable, "-m", "jobgraph", "plan", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_plan_shows_each_runners_submission_with_secrets_as_references_and_writes_nothing(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({
        "schedule": "USING CRON 0 9 * * * Europe/Paris",
        "runners": {"slurm": {"pool_partitions": {"small": "debug"}}},
        "pools": {"small": {"max_parallel": 1, "cpu": 1, "memory": "64m"}},
        "images": {"sh": ["sh", "-c"], "busybox": ["sh", "-c"]},
        "jobs": [
            sh("here", "echo $API_TOKEN", secrets=["API_TOKEN"], env={"MODE": "fast"}),
            {"name": "boxed", "image": "busybox", "args": ["echo hi"], "runner": "podman", "pool": "small",
             "after": ["here"], "secrets": ["API_TOKEN"]},
            {"name": "batch", "image": "busybox", "args": ["echo hi"], "runner": "slurm", "pool": "small",
             "after": ["boxed"], "timeout": "90s"},
        ]})
    result = plan(tmp_path, str(path))
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    document = yaml.safe_load(result.stdout)
    here, boxed, batch = document["jobs"]
    assert here["runner"] == "local" and here["argv"] == ["sh", "-c", "echo $API_TOKEN"]
    assert here["env"]["API_TOKEN"] == "${API_TOKEN}" and here["env"]["MODE"] == "fast"
    assert boxed["runner"] == "podman" and boxed["create"]["environment"]["API_TOKEN"] == "${API_TOKEN}"
    assert boxed["create"]["mem_limit"] == 64 << 20 and boxed["after"] == ["here"]
    assert batch["runner"] == "slurm" and "--time=2" in batch["argv"] and "--mem=64M" in batch["argv"]
    assert "--partition=debug" in batch["argv"]  # the pool's partition
    assert "sh -c 'echo hi'" in batch["stdin"]
    fires = [datetime.fromisoformat(moment) for moment in document["schedule"]["next"]]
    assert len(fires) == 5 and all(f.hour == 9 and f.minute == 0 for f in fires)
    assert all(f.utcoffset() is not None and f.utcoffset().total_seconds() in (3600, 7200) for f in fires)
    assert sorted(fires) == fires
    assert not (tmp_path / ".jobgraph").exists()
    as_json = json.loads(plan(tmp_path, str(path), "--format", "json", "--runner", "local").stdout)
    assert {job["runner"] for job in as_json["jobs"]} == {"local"}


def test_plan_of_a_bad_file_runs_nothing(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [sh("a", "true", runner="slurm", after=["nope"])]})
    result = plan(tmp_path, str(path))
    assert result.returncode == 2 and "unknown predecessor 'nope'" in result.stderr
