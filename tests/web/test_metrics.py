"""GET /metrics of a real `jobgraph web` and `jobgraph serve --http`, scraped over HTTP and read with Prometheus'
own parser: every figure is what the store's records say (computed in Python by tests/app/test_metrics.py), the
live ones (running runs, jobs holding and waiting for a pool's slot) while a run runs, and a server off loopback
shows them only to a read token.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from jobgraph.app import metrics
from jobgraph.engine import AttemptEnded, AttemptStarted, RunEnded, RunStarted, TaskChanged, TaskInfo
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from jobgraph.store.records import aware
from tests.app.test_metrics import SHOP, TOLERANCE, assert_matches, expected, records_scheduled
from tests.conftest import Cli, WritePipeline, sh, store_url
from tests.web.conftest import get, served

HISTOGRAMS = {"jobgraph_attempt_duration_seconds": ("durations", metrics.DURATION_BUCKETS),
              "jobgraph_queue_wait_seconds": ("queue_waits", metrics.QUEUE_BUCKETS),
              "jobgraph_scheduler_lag_seconds": ("scheduler_lag", metrics.LAG_BUCKETS)}


@contextlib.contextmanager
def server(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real `jobgraph ARGS` serving HTTP in tmp_path (its store there); its process and base URL."""
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        output: list[str] = []
        while not any("jobgraph web: " in line for line in output):
            line = process.stdout.readline()
            assert line, "".join(output) + (process.stderr.read() if process.stderr else "")
            output.append(line)
        match = re.search(r"jobgraph web: http://[^:]+:(\d+)/", "".join(output))
        assert match, output
        yield process, f"http://127.0.0.1:{match[1]}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def scrape(base: str, **headers: str) -> metrics.Snapshot:
    """GET /metrics, parsed by prometheus_client's parser, back into the figures it shows (zero gauges left out)."""
    response = httpx.get(f"{base}/metrics", headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = metrics.Snapshot()
    names = set()
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        if family.name in HISTOGRAMS:
            field, bounds = HISTOGRAMS[family.name]
            into: dict[tuple[str, str], metrics.Histogram] = getattr(found, field)
            keys = [name for name in (family.samples[0].labels if family.samples else {}) if name != "le"]
            for sample in family.samples:
                key = (sample.labels[keys[0]], sample.labels[keys[1]])
                histogram = into.setdefault(key, metrics.Histogram(bounds))
                if sample.name.endswith("_bucket"):
                    histogram.counts[[metrics_le(b) for b in bounds].index(sample.labels["le"])] = int(sample.value)
                elif sample.name.endswith("_sum"):
                    histogram.total = sample.value
            continue
        for sample in family.samples:
            if sample.value == 0 and family.type == "gauge":
                continue
            if family.name == "jobgraph_runs":
                found.runs[(sample.labels["pipeline"], sample.labels["state"])] = int(sample.value)
            elif family.name == "jobgraph_jobs":
                found.jobs[(sample.labels["pipeline"], sample.labels["state"])] = int(sample.value)
            elif family.name == "jobgraph_pool_jobs":
                labels = sample.labels
                found.pool_jobs[(labels["pipeline"], labels["pool"], labels["state"])] = int(sample.value)
            elif family.name == "jobgraph_runner_errors":
                assert sample.name == "jobgraph_runner_errors_total"
                found.runner_errors[(sample.labels["pipeline"], sample.labels["runner"])] = int(sample.value)
    assert names == {"jobgraph_runs", "jobgraph_jobs", "jobgraph_pool_jobs", "jobgraph_runner_errors",
                     "jobgraph_metrics_read_seconds", *HISTOGRAMS}
    return found


def metrics_le(bound: float) -> str:
    """A bound as the exposition format writes it in `le`."""
    return "+Inf" if bound == float("inf") else repr(bound)


def until(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Wait until `check()` holds (the store is read again each time)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_jobgraph_web_serves_what_the_store_records(cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    path = write_pipeline(SHOP, with_sh=False)
    cli("run", str(path), check=1)
    cli("run", str(path), check=1)
    wanted = expected(store_url(tmp_path))
    assert wanted.runs == {("shop", "FAILED"): 2} and wanted.runner_errors == {("shop", "local"): 2}
    with server(tmp_path, "web", "--port", "0") as (_, base):
        first = scrape(base)
        assert_matches(first, wanted)
        assert first.durations[("shop", "FAILED")].count == 4  # broken, twice a run
        cli("run", str(path), check=1)  # a run by another process counts at the next scrape
        assert_matches(scrape(base), expected(store_url(tmp_path)))
        assert scrape(base).runs == {("shop", "FAILED"): 3}
        openmetrics = httpx.get(f"{base}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"},
                                timeout=60)
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        families = {family.name: family for family in openmetrics_families(openmetrics.text)}
        assert families["jobgraph_runner_errors"].samples[0].value == 3


def test_serve_http_shows_a_running_run_its_pool_and_the_scheduler_lag(cli: Cli, write_pipeline: WritePipeline,
                                                                      tmp_path: Path) -> None:
    release = tmp_path / "release"
    hold = f'while [ ! -e "{release}" ]; do sleep 0.02; done'
    path = write_pipeline({"name": "queue", "pools": {"solo": {"max_parallel": 1}},
                           "jobs": [sh("one", hold, pool="solo"), sh("two", hold, pool="solo"),
                                    sh("last", "echo done", after=["one", "two"])]})
    cli("deploy", str(path), check=0)
    operate = cli("token", "create", "ops", "--scope", "operate", check=0).stdout.strip()
    url = store_url(tmp_path)
    with server(tmp_path, "serve", "--tick", "0.2", "--http", "127.0.0.1:0") as (_, base):
        started = httpx.post(f"{base}/api/v1/pipelines/queue/trigger", headers={"Authorization": f"Bearer {operate}"},
                             timeout=60)
        assert started.status_code == 202 and started.json()["action"] == "STARTED", started.text
        run_id = started.json()["run_id"]
        with Store(url) as records:
            until(lambda: sorted(t.state for t in records.tasks(run_id)) == ["PENDING", "QUEUED", "RUNNING"],
                  "one job never held the pool while the other waited")
            [fire] = [f for f in Deployments(records).fires("queue") if f.run_id == run_id]
            assert fire.action == "STARTED" and aware(fire.scheduled_time) == aware(records_scheduled(records, run_id))
            first_start = min(aware(a.started_at) for a in records.attempts(run_id))
        live = scrape(base)
        assert live.pool_jobs == {("queue", "solo", "QUEUED"): 1, ("queue", "solo", "RUNNING"): 1}
        assert live.runs == {("queue", "RUNNING"): 1}
        assert live.jobs == {("queue", "RUNNING"): 1, ("queue", "QUEUED"): 1, ("queue", "PENDING"): 1}
        lag = live.scheduler_lag[("queue", "trigger")]
        assert lag.count == 1
        assert abs(lag.total - (first_start - aware(fire.scheduled_time)).total_seconds()) <= TOLERANCE
        assert_matches(live, expected(url))
        release.touch()
        with Store(url) as records:
            until(lambda: records.run(run_id).state == "SUCCEEDED", "the run did not end")
        ended = scrape(base)
        assert ended.pool_jobs == {} and ended.runs == {("queue", "SUCCEEDED"): 1}
        assert ended.queue_waits[("queue", "solo")].count == 2
        assert_matches(ended, expected(url))


def test_metrics_off_loopback_need_a_read_token(cli: Cli, tmp_path: Path) -> None:
    reader = cli("token", "create", "prometheus", "--scope", "read", check=0).stdout.strip()
    gone = cli("token", "create", "gone", "--scope", "read", check=0).stdout.strip()
    cli("token", "revoke", "gone", check=0)
    with server(tmp_path, "web", "--host", "0.0.0.0", "--port", "0") as (_, base):
        refused = httpx.get(f"{base}/metrics", timeout=60)
        assert refused.status_code == 401 and "jobgraph_" not in refused.text
        for token in ("jg_not_a_token", gone):
            assert httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"},
                             timeout=60).status_code == 401
        assert scrape(base, Authorization=f"Bearer {reader}").runs == {}


def test_hostile_names_reach_the_scraper_as_they_are(tmp_path: Path) -> None:
    """A pipeline, pool or runner name with quotes, backslashes, a newline or braces is a label value, escaped by
    the client and read back whole by the parser: it can never add a series or break the format."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    pipeline, pool, runner = 'shop"} evil{x="1\\', "pool\nnext_metric 1", 'run"ner'
    run_id, at = str(uuid.uuid4()), datetime(2030, 1, 2, tzinfo=UTC)
    log = tmp_path / "a.log"
    with Store(url) as records:
        records.record_all([
            RunStarted(run_id, pipeline, at, at, (TaskInfo("a", pool, "sh", ()),), "{}"),
            TaskChanged(run_id, "a", TaskState.RUNNING, at, attempt=1),
            AttemptStarted(run_id, "a", 1, at, log, runner),
            AttemptEnded(run_id, "a", 1, AttemptStatus.ERROR, at, at + timedelta(seconds=2), None, "no", log),
            TaskChanged(run_id, "a", TaskState.FAILED, at + timedelta(seconds=2), attempt=1, reason="no"),
            RunEnded(run_id, RunState.FAILED, at + timedelta(seconds=3))])
    with served(url) as app:
        response = get(app, "/metrics")
    assert response.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    assert "next_metric" not in families and "evil" not in families
    [error] = families["jobgraph_runner_errors"].samples
    assert error.labels == {"pipeline": pipeline, "runner": runner} and error.value == 1
    waits = {sample.labels["pool"] for sample in families["jobgraph_queue_wait_seconds"].samples}
    assert waits == {pool}
