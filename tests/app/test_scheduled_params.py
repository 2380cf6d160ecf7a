"""A scheduled run, as the scheduler service starts it (Scheduler + RunHost.scheduled_run): its jobs get the fire
time as `{{ scheduled_time }}` and the deployed version's param defaults (`deploy --param` sets them)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobgraph.app.host import RunHost
from jobgraph.recovery import recover_lost_runs
from jobgraph.scheduler import Scheduler
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from tests.conftest import WritePipeline


def test_a_scheduled_run_gets_its_fire_time_and_the_deployed_params(
        tmp_path: Path, write_pipeline: WritePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBGRAPH_HOME", str(tmp_path / ".jobgraph"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "argv"
    program = f"import sys; open({str(out)!r}, 'a').write(' '.join(sys.argv[1:]) + chr(10))"
    write_pipeline({"name": "hourly", "schedule": "60 MINUTE",
                    "params": [{"name": "day", "type": "date"}, {"name": "n", "type": "integer", "default": 1}],
                    "jobs": [{"name": "a", "command": ["python", "-c", program, "{{ scheduled_time }}",
                                                       "{{ params.day }}", "{{ params.n }}"]}]})
    url = f"sqlite:///{tmp_path / 'store.db'}"
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    deployed = subprocess.run([sys.executable, "-m", "jobgraph", "deploy", "pipeline.yaml", "--store", url,
                               "--param", "day=2024-05-06"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
    assert deployed.returncode == 0, deployed.stderr

    with Store(url) as records:
        fire = Deployments(records).get("hourly").next_fire_at
        assert fire is not None
        clock = [fire + timedelta(milliseconds=5)]

        async def main() -> None:
            host = RunHost(records, None, lambda _line: None)
            scheduler = Scheduler(records, lambda: clock[0], host.scheduled_run, "A",
                                  recover=lambda: recover_lost_runs(records, tmp_path))
            assert await scheduler.tick()
            deadline = time.monotonic() + 60
            while scheduler.running():
                assert time.monotonic() < deadline, "the scheduled run never ended"
                await asyncio.sleep(0.05)
            await scheduler.shutdown(drain=True)
            await host.close(drain=True)

        asyncio.run(main())
        run = records.runs(1, "hourly")[0]
        stored = records.run(run.run_id)
    assert stored.trigger == "schedule" and stored.state == "SUCCEEDED"
    assert stored.scheduled_time == fire.astimezone(UTC)
    assert json.loads(stored.params or "") == {"day": "2024-05-06", "n": 1}
    assert out.read_text().split() == [fire.astimezone(UTC).isoformat(), "2024-05-06", "1"]
    assert datetime.fromisoformat(out.read_text().split()[0]) == fire
