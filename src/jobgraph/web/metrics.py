"""GET /metrics: the store's figures (jobgraph.app.metrics) in Prometheus' text format, by the official client.

A custom collector reads the store at each scrape, in Starlette's thread pool, so a scrape never
holds the event loop. It has a registry of its own (not the client's global one): each app created
in a process (tests make many) exposes only its own store, and nothing of the Python process
(jobgraph's figures are about runs, whoever ran them). The route sits behind the auth middleware
like every read: a token of scope `read` when the server listens off loopback. Names and labels:
README (Metrics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response

from jobgraph.app import metrics
from jobgraph.states import RunState, TaskState
from jobgraph.store import Store


def _le(bound: float) -> str:
    """A bucket's upper bound as the exposition format writes it."""
    return "+Inf" if bound == math.inf else repr(bound)


def _histogram(name: str, documentation: str, labels: tuple[str, str],
               values: Mapping[tuple[str, str], metrics.Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for key, histogram in sorted(values.items()):
        buckets = [(_le(bound), count) for bound, count in zip(histogram.bounds, histogram.counts, strict=True)]
        family.add_metric(list(key), buckets, histogram.total)
    return family


def _by_state(name: str, documentation: str, values: Mapping[tuple[str, str], int],
              states: tuple[str, ...]) -> GaugeMetricFamily:
    """A gauge per pipeline and state, every known state of each pipeline present (0 if none), so a query for
    one state finds a value rather than nothing."""
    family = GaugeMetricFamily(name, documentation, labels=["pipeline", "state"])
    pipelines = sorted({pipeline for pipeline, _ in values})
    for pipeline in pipelines:
        for state in (*states, *sorted(s for p, s in values if p == pipeline and s not in states)):
            family.add_metric([pipeline, state], values.get((pipeline, state), 0))
    return family


class StoreCollector(Collector):
    """Collects jobgraph's metrics from the store at each scrape (jobgraph.app.metrics says what each means)."""

    def __init__(self, records: Store) -> None:
        self.reader = metrics.MetricsReader(records)

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not read the store."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family, from one read of the store."""
        began = time.perf_counter()
        found = self.reader.snapshot()
        took = time.perf_counter() - began
        yield _by_state("jobgraph_runs", "Runs in the store by pipeline and current state.", found.runs,
                        tuple(RunState))
        yield _by_state("jobgraph_jobs", "Jobs of the store's runs by pipeline and current state (a retried "
                        "run's jobs as its latest attempt left them).", found.jobs, tuple(TaskState))
        pools = GaugeMetricFamily("jobgraph_pool_jobs", "Jobs waiting for a slot (QUEUED) or holding one "
                                  "(RUNNING) now, by pipeline and pool.", labels=["pipeline", "pool", "state"])
        for where, count in sorted(found.pool_jobs.items()):
            pools.add_metric(list(where), count)
        yield pools
        yield _histogram("jobgraph_attempt_duration_seconds", "Durations of ended attempts, by pipeline and status "
                         "(DONE, FAILED, TIMEOUT, CANCELLED, ERROR).", ("pipeline", "status"), found.durations)
        yield _histogram("jobgraph_queue_wait_seconds", "Time from a job being ready (its predecessors ended, or "
                         "its run started) to its first attempt's start: waiting for a pool slot plus dispatch.",
                         ("pipeline", "pool"), found.queue_waits)
        yield _histogram("jobgraph_scheduler_lag_seconds", "Time from a scheduled or triggered run's fire time to "
                         "its first attempt's start.", ("pipeline", "trigger"), found.scheduler_lag)
        errors = CounterMetricFamily("jobgraph_runner_errors", "Attempts that ended ERROR (the runner could not "
                                     "start or follow the job), by pipeline and runner.", labels=["pipeline", "runner"])
        for key, count in sorted(found.runner_errors.items()):
            errors.add_metric(list(key), count)
        yield errors
        yield GaugeMetricFamily("jobgraph_metrics_read_seconds", "How long this scrape's read of the store took.",
                                value=took)


def registry_for(records: Store) -> CollectorRegistry:
    """A registry holding only the store's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(records))
    return registry


def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: plain, so Starlette runs it in its thread pool (the store is read at each scrape).

    The format is the one the scraper's Accept asks for, as the client's own exporters choose it: the
    classic text format (0.0.4) by default, OpenMetrics for a Prometheus that prefers it.
    """
    registry: CollectorRegistry = request.app.state.metrics
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(registry), headers={"Content-Type": content_type, "Cache-Control": "no-store"})
