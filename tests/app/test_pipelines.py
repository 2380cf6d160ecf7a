"""Deployed pipelines through the application layer, as the CLI and the web API change them: suspend stops
the schedule (noted as by hand), resume counts it from now with the failure count reset, on both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobgraph.app import pipelines
from jobgraph.config import load
from jobgraph.errors import StoreError
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from tests.conftest import WritePipeline, sh


def test_suspend_and_resume(write_pipeline: WritePipeline, any_store_url: str) -> None:
    path = write_pipeline({"name": "hourly", "schedule": "60 MINUTE", "jobs": [sh("a", "true")]})
    with Store(any_store_url) as records:
        deployed = pipelines.deploy(records, load(path), path)
        assert deployed.new and deployed.pipeline.state == "ACTIVE"
        Deployments(records).update("hourly", failures_in_row=2)

        suspended = pipelines.suspend(records, "HOURLY")
        assert (suspended.name, suspended.state, suspended.note) == ("hourly", "SUSPENDED", "suspended by hand")
        assert Deployments(records).get("hourly").state == "SUSPENDED"
        [status] = pipelines.statuses(records)
        assert status.next_fire_at is None and status.last_run is None

        before = datetime.now(UTC)
        resumed = pipelines.resume(records, "hourly")
        assert (resumed.state, resumed.note, resumed.failures_in_row) == ("ACTIVE", None, 0)
        assert resumed.next_fire_at is not None
        assert before + timedelta(minutes=59) < resumed.next_fire_at <= datetime.now(UTC) + timedelta(minutes=60)
        assert pipelines.statuses(records)[0].next_fire_at == resumed.next_fire_at
        assert not pipelines.deploy(records, load(path), path).new


def test_an_unknown_pipeline_is_refused_by_name(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as records:
        for change in (pipelines.suspend, pipelines.resume):
            with pytest.raises(StoreError, match="nope"):
                change(records, "nope")
