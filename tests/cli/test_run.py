"""`jobgraph run`'s closing summary, as a user reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
