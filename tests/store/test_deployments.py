"""Dropping a pipeline, as users run `jobgraph drop`: a purge never deletes the records of a run in progress."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, update

from jobgraph.errors import StoreError
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments, Dropped
from jobgraph.store.tables import runs
from tests.conftest import Cli, WritePipeline, sh, store_url


def wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_purge_is_refused_while_a_run_is_in_progress(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    write_pipeline({"name": "nightly", "jobs": [
        sh("wait", f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done"),
        sh("then", "true", after=["wait"]),
    ]})
    cli("deploy", "pipeline.yaml", check=0)
    release.touch()
    cli("trigger", "nightly", check=0)
    release.unlink()
    started.unlink()
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    running = subprocess.Popen([sys.executable, "-m", "jobgraph", "trigger", "nightly"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(started)
        store = Store(store_url(tmp_path))
        live = store.runs(1, "nightly")[0]
        assert live.state == "RUNNING"

        refused = cli("drop", "nightly", "--purge", check=2)
        assert f"pipeline nightly has a run in progress: {live.run_id} (by " in refused.stderr
        assert "nothing was dropped or purged" in refused.stderr and "Traceback" not in refused.stderr
        assert Deployments(store).get("nightly").name == "nightly"
        assert len(store.runs(10, "nightly")) == 2 and len(store.tasks(live.run_id)) == 2
    finally:
        release.touch()
        out, err = running.communicate(timeout=120)
    assert running.returncode == 0, out + err
    assert store.run(live.run_id).state == "SUCCEEDED"
    assert {t.state for t in store.tasks(live.run_id)} == {"SUCCEEDED"}

    assert "nightly dropped; purged 2 runs and their history" in cli("drop", "nightly", "--purge", check=0).stdout
    assert store.runs(10, "nightly") == []
    store.close()


def test_purge_after_a_plain_drop_purges_the_history_by_name(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "Nightly", "jobs": [sh("a", "true")]})
    cli("deploy", "pipeline.yaml", check=0)
    cli("trigger", "nightly", check=0)
    cli("run", "pipeline.yaml", check=0)
    assert "Nightly dropped; its run history is kept" in cli("drop", "nightly", check=0).stdout
    store = Store(store_url(tmp_path))
    assert len(store.runs(10, "Nightly")) == 2

    purged = cli("drop", "nightly", "--purge", check=0).stdout
    assert "Nightly was not deployed; purged 2 runs and their history" in purged
    assert store.runs(10, "Nightly") == []
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from pipeline_versions").scalar() == 0
        assert conn.exec_driver_sql("select count(*) from fires").scalar() == 0
        assert conn.exec_driver_sql("select count(*) from task_runs").scalar() == 0
    again = cli("drop", "nightly", "--purge", check=2).stderr
    assert "no pipeline named 'nightly': none is deployed, and no runs or versions carry that name" in again
    assert "no deployed pipeline named 'nightly'" in cli("drop", "nightly", check=2).stderr
    store.close()


def test_purge_on_both_backends_spares_a_live_run_and_takes_a_lost_one(store_url: str) -> None:
    store = Store(store_url)
    deployments = Deployments(store)
    now = datetime.now(UTC)
    deployments.deploy("etl", "{}", "etl.yaml", None, now, None)
    with store.engine.begin() as conn:
        for run_id, state, owner in (("done", "FAILED", None), ("live", "RUNNING", store.owner)):
            conn.execute(insert(runs).values(run_id=run_id, pipeline="etl", state=state, run_attempt=1,
                                             started_at=now, scheduled_time=now, snapshot="{}", owner=owner))
    with pytest.raises(StoreError, match=f"pipeline etl has a run in progress: live \\(by {store.owner}\\)"):
        deployments.drop("ETL", purge=True)
    assert deployments.get("etl").name == "etl" and {r.run_id for r in store.runs(10, "etl")} == {"done", "live"}

    with store.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.run_id == "live").values(owner=f"{socket.gethostname()}:1:gone"))
    assert deployments.drop("etl", purge=True) == Dropped("etl", True, 2)
    assert store.runs(10, "etl") == []
    store.close()
