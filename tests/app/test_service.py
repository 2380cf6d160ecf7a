"""The scheduler service as the application layer runs it (`jobgraph serve`): the runs of several deployed
pipelines each get runners set up for their own pipeline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from jobgraph.states import RunState
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from tests.conftest import Cli, WritePipeline, store_url


def test_two_pipelines_with_their_own_images_both_run_under_one_service(tmp_path: Path, cli: Cli,
                                                                       write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "alpha", "images": {"sh": ["sh", "-c"]},
                    "jobs": [{"name": "a", "image": "sh", "args": ["echo alpha"]}]}, "alpha.yaml", with_sh=False)
    write_pipeline({"name": "beta", "images": {"bash": ["bash", "-c"]},
                    "jobs": [{"name": "b", "image": "bash", "args": ["echo beta"]}]}, "beta.yaml", with_sh=False)
    cli("deploy", "alpha.yaml", check=0)
    cli("deploy", "beta.yaml", check=0)
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    env.pop("JOBGRAPH_STORE", None)
    service = subprocess.Popen([sys.executable, "-m", "jobgraph", "serve", "--tick", "0.1"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with Store(store_url(tmp_path)) as records:
            deadline = time.monotonic() + 60
            while Deployments(records).lease_holder("scheduler", datetime.now(UTC)) is None:
                assert service.poll() is None and time.monotonic() < deadline, "the service did not start"
                time.sleep(0.05)
            assert "run requested from the scheduler service" in cli("trigger", "alpha", check=0).stdout
            assert "run requested from the scheduler service" in cli("trigger", "beta", check=0).stdout
            while {run.state for run in records.runs()} & {RunState.RUNNING} or len(records.runs()) < 2:
                assert time.monotonic() < deadline, "the runs did not end"
                time.sleep(0.05)
            assert {run.pipeline: run.state for run in records.runs()} == {"alpha": RunState.SUCCEEDED,
                                                                            "beta": RunState.SUCCEEDED}
    finally:
        service.send_signal(signal.SIGTERM)
        output = service.communicate(timeout=60)[0]
    assert service.returncode == 0, output
    assert "has no command" not in output
