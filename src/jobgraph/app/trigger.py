"""Triggering a deployed pipeline: a live scheduler service takes it as a request and says what it did with it
(started, queued or skipped by its overlap policy); with no live service the caller runs the deployed version.

Waiting for the service's answer is bounded: a live service takes requests every tick and renews its lease;
once no live service holds the lease, the request is withdrawn (compare-and-set against the service taking it at
that very moment). The same wait serves a command (blocking) and a host with its own event loop (async).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from jobgraph.app.pipelines import now
from jobgraph.app.runs import RunPlan
from jobgraph.config import Pipeline, check_pipeline
from jobgraph.config.params import given_values, params_text, resolve
from jobgraph.errors import JobgraphError
from jobgraph.scheduler import LEASE, live_lease_holder, request_note
from jobgraph.store.deployments import DeployedPipeline, Deployments, Fire

REQUEST_GRACE_SECS = 2.0
"""How long a trigger waits for the fire of a request that a service took just before it died."""
POLL_SECS = 0.05
"""How often the store is read for the service's answer."""

STARTED, QUEUED, SKIPPED = "STARTED", "QUEUED", "SKIPPED"


@dataclass(frozen=True)
class TriggerOutcome:
    """What became of a trigger: `action` STARTED, QUEUED or SKIPPED, the run it started if it did, why (the
    service's note), and the service that took it (None: the run was started by the caller)."""

    action: str
    run_id: str | None
    note: str | None = None
    holder: str | None = None


def no_service(deployments: Deployments) -> str:
    """Why no scheduler service takes requests on this store, for a person."""
    lease = deployments.lease(LEASE)
    if lease is None:
        return "no scheduler service is running on this store"
    if lease.expires_at >= now():
        return f"no scheduler service is running on this store (its last one, {lease.holder}, has died)"
    return (f"no scheduler service is running on this store (the lease of {lease.holder} ran out "
            f"{lease.expires_at:%Y-%m-%d %H:%M:%S} UTC)")


def request(deployments: Deployments, name: str, note: str, params: Mapping[str, object] | None = None) -> datetime:
    """Record a request to run the pipeline now, for the service; its time names it (its record wakes the service).
    `params` (checked by `deployed_plan` first) go with it, for the service's run."""
    moment = now()
    deployments.record_fire(name, moment, "REQUESTED", moment,
                            note=request_note(note, None if params is None else params_text(params)))
    return moment


def outcome_of(fire: Fire, holder: str) -> TriggerOutcome:
    """A service's fire as a trigger's outcome; JobgraphError when the service could not start the run."""
    if fire.action in (STARTED, QUEUED, SKIPPED):
        return TriggerOutcome(fire.action, fire.run_id, fire.note, holder)
    note = f": {fire.note}" if fire.note else ""
    raise JobgraphError(f"the scheduler service ({holder}) could not start {fire.pipeline}{note}")


class _Answer:
    """One request's wait for the service's answer, a read of the store at a time."""

    def __init__(self, deployments: Deployments, name: str, requested: datetime,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._deployments, self._name, self._requested, self._clock = deployments, name, requested, clock
        self._orphaned_since: float | None = None

    def read(self) -> tuple[bool, Fire | None]:
        """(True, the fire) once the service acted; (True, None) once the request is withdrawn; (False, None) to
        read again. JobgraphError if the service took it and died before starting it."""
        outcome = self._deployments.request_outcome(self._name, self._requested)
        if outcome is not None:
            return True, outcome
        if live_lease_holder(self._deployments, now()) is not None:
            self._orphaned_since = None
        elif self._deployments.withdraw_request(self._name, self._requested):
            return True, None
        elif self._orphaned_since is None:
            self._orphaned_since = self._clock()
        elif self._clock() - self._orphaned_since > REQUEST_GRACE_SECS:
            raise JobgraphError(f"the scheduler service took the request for {self._name} and stopped before "
                                "starting it; nothing runs: trigger it again")
        return False, None


def await_outcome(deployments: Deployments, name: str, requested: datetime) -> Fire | None:
    """Block until the service has acted on a request; None if no live service took it (it is withdrawn then)."""
    answer = _Answer(deployments, name, requested)
    while True:
        done, fire = answer.read()
        if done:
            return fire
        time.sleep(POLL_SECS)


async def await_outcome_async(deployments: Deployments, name: str, requested: datetime) -> Fire | None:
    """`await_outcome` for a host with its own event loop: it goes on serving while it waits."""
    answer = _Answer(deployments, name, requested)
    while True:
        done, fire = answer.read()
        if done:
            return fire
        await asyncio.sleep(POLL_SECS)


def deployed_plan(deployments: Deployments, deployed: DeployedPipeline, runner: str | None,
                  params: Mapping[str, object] | None = None, from_text: bool = False,
                  where: str = "params") -> RunPlan:
    """The plan of a run of the deployed version, triggered by hand, with the parameter values given (as text
    from `--param`, or typed from the API's body): each checked here, ConfigError naming the bad ones (in field
    `where`: `--param NAME` or `params.NAME`)."""
    snapshot = deployments.snapshot(deployed.name, deployed.version)
    pipeline = check_pipeline(Pipeline.model_validate_json(snapshot), f"pipeline {deployed.name}", runner)
    if params:
        params = given_values(pipeline, params, f"pipeline {deployed.name}", from_text, where)
    resolve(pipeline, params, f"pipeline {deployed.name}", where=where)  # one with no value: refused before a request
    return RunPlan(pipeline, trigger="trigger", version=deployed.version, params=params or None)
