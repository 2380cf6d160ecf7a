"""Deployed pipelines: deploy a file's pipeline as a version, list them with their last and next runs, suspend,
resume and drop them. Each function does its change in the store and returns what it did."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobgraph.app.lost_runs import report_lost_runs
from jobgraph.config import Pipeline
from jobgraph.config.params import given_values, with_defaults
from jobgraph.errors import ConfigError, Problem
from jobgraph.schedule import parse_schedule
from jobgraph.store import RunSummary, Store
from jobgraph.store.deployments import ACTIVE, SUSPENDED, DeployedPipeline, Deployments, Dropped

SUSPENDED_BY_HAND = "suspended by hand"


@dataclass(frozen=True)
class Deployed:
    """What `deploy` did: the pipeline as deployed now, and whether its content made a new version."""

    pipeline: DeployedPipeline
    new: bool


@dataclass(frozen=True)
class PipelineStatus:
    """A deployed pipeline with its newest run and, if it is active and scheduled, its next fire time."""

    pipeline: DeployedPipeline
    last_run: RunSummary | None
    next_fire_at: datetime | None


def now() -> datetime:
    """Deployments are timed in UTC."""
    return datetime.now(UTC)


def next_fire(schedule: str | None, anchor: datetime) -> datetime | None:
    """A schedule's first fire time after `anchor`, counted from it; None without a schedule."""
    return parse_schedule(schedule).next_after(anchor, anchor) if schedule else None


def with_deployed_params(pipeline: Pipeline, given: Mapping[str, str], source: Path) -> Pipeline:
    """The pipeline with `--param` values as its parameters' defaults (what its scheduled runs use); ConfigError
    for a bad value, or a scheduled pipeline with a parameter that has no value (its runs could never start)."""
    deployed = with_defaults(pipeline, given_values(pipeline, given, str(source), from_text=True))
    missing = [Problem(f"parameter '{param.name}' has no default, and a scheduled run has nobody to give it: "
                       f"set one in the file or deploy with --param {param.name}=VALUE", field=f"params.{param.name}")
               for param in deployed.params if param.default is None]
    if pipeline.schedule and missing:
        raise ConfigError(str(source), missing)
    return deployed


def deploy(records: Store, pipeline: Pipeline, source: Path, params: Mapping[str, str] | None = None) -> Deployed:
    """Store the pipeline's snapshot as a version (a new one only if its content changed) and its next fire time;
    `params` (text, from `--param`) become its parameters' defaults."""
    pipeline = with_deployed_params(pipeline, params or {}, source)
    moment = now()
    deployments = Deployments(records)
    _version, new = deployments.deploy(pipeline.name, pipeline.model_dump_json(), str(source.resolve()),
                                       pipeline.schedule, moment, next_fire(pipeline.schedule, moment))
    return Deployed(deployments.get(pipeline.name), new)


def statuses(records: Store) -> list[PipelineStatus]:
    """Every deployed pipeline, by name, with its last run; a suspended one has no next fire time."""
    return [PipelineStatus(deployed, next(iter(records.runs(1, deployed.name)), None),
                           deployed.next_fire_at if deployed.state == ACTIVE else None)
            for deployed in Deployments(records).all()]


def suspend(records: Store, name: str) -> DeployedPipeline:
    """Stop scheduling the pipeline (runs in progress go on), noting it was by hand; StoreError if it is unknown."""
    deployments = Deployments(records)
    deployed = deployments.get(name)
    deployments.update(deployed.name, state=SUSPENDED, note=SUSPENDED_BY_HAND)
    return deployments.get(deployed.name)


def resume(records: Store, name: str) -> DeployedPipeline:
    """Schedule the pipeline again with its failure count reset and its schedule counted from now."""
    moment = now()
    deployments = Deployments(records)
    deployed = deployments.get(name)
    deployments.update(deployed.name, state=ACTIVE, failures_in_row=0, note=None, anchor=moment,
                       next_fire_at=next_fire(deployed.schedule, moment))
    return deployments.get(deployed.name)


def drop(records: Store, name: str, purge: bool, note: Callable[[str], None]) -> Dropped:
    """Remove the deployment; with purge, also its history, once lost runs are closed (a live run refuses it)."""
    if purge:
        report_lost_runs(records, note)  # a run whose process died is closed first, so only live runs block
    return Deployments(records).drop(name, purge)

