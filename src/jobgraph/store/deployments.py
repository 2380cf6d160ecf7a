"""Deployed pipelines, their versions, the record of every schedule fire, and the scheduler's lease.

Like the rest of the store it knows nothing of DAGs or schedules: the scheduler computes fire times
and passes them in. Every statement is a SQLAlchemy construct with bound parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from jobgraph.errors import StoreError, did_you_mean
from jobgraph.owner import owner_is_gone
from jobgraph.states import RunState
from jobgraph.store.records import aware as _aware
from jobgraph.store.records import utc as _utc
from jobgraph.store.store import Store
from jobgraph.store.tables import attempts, fires, leases, pipeline_versions, pipelines, runs, task_runs
from jobgraph.store.wakeup import Listener, listen, notify, poke

ACTIVE, SUSPENDED = "ACTIVE", "SUSPENDED"


@dataclass(frozen=True)
class DeployedPipeline:
    """A pipeline as deployed: which version runs, its schedule and where it stands."""

    name: str
    version: str
    state: str
    schedule: str | None
    anchor: datetime
    next_fire_at: datetime | None
    failures_in_row: int
    deployed_at: datetime
    note: str | None


@dataclass(frozen=True)
class Dropped:
    """What `drop` did: the pipeline's name, whether it was deployed, and how many runs were purged."""

    name: str
    was_deployed: bool
    purged_runs: int


@dataclass(frozen=True)
class Fire:
    """One thing the scheduler did (or was asked to do) for a pipeline."""

    pipeline: str
    scheduled_time: datetime
    action: str
    run_id: str | None
    note: str | None
    at: datetime


@dataclass(frozen=True)
class Lease:
    """Who holds a lease, and until when (it may have expired)."""

    holder: str
    expires_at: datetime


def content_version(snapshot: str) -> str:
    """A version is the hash of the pipeline's content: redeploying the same file changes nothing."""
    return hashlib.sha256(snapshot.encode()).hexdigest()[:16]


class Deployments:
    """Reads and writes the deployment tables of a Store.

    With `wakes` (the default), every change it commits to what the scheduler waits for (a deploy, a
    state or fire time, a drop, a `trigger` request) wakes the scheduler service listening on the store
    (see `listen`); the scheduler's own writes pass wakes=False, as nothing needs to wake it for them.
    """

    def __init__(self, store: Store, wakes: bool = True) -> None:
        self._engine = store.engine
        self._wakes = wakes

    @contextlib.contextmanager
    def _changing(self) -> Iterator[Connection]:
        """A writing transaction that, committed, wakes the listening scheduler."""
        with self._engine.begin() as conn:
            yield conn
            if self._wakes:
                notify(conn)
        if self._wakes:
            poke(self._engine)

    def listen(self) -> Listener:
        """Listen for the wake-ups other processes' changes send (WakeupUnavailable says why not)."""
        return listen(self._engine)

    def deploy(self, name: str, snapshot: str, source: str, schedule: str | None, now: datetime,
               next_fire_at: datetime | None) -> tuple[str, bool]:
        """Store a version and make it the one that runs; return (version, whether it is new)."""
        version = content_version(snapshot)
        at = _utc(now)
        with self._changing() as conn:
            known = conn.execute(select(pipeline_versions.c.version).where(and_(
                pipeline_versions.c.name == name, pipeline_versions.c.version == version))).first()
            if known is None:
                conn.execute(insert(pipeline_versions).values(
                    name=name, version=version, snapshot=snapshot, source=source, created_at=at))
            current = conn.execute(select(pipelines).where(pipelines.c.name == name)).mappings().first()
            values = {"version": version, "schedule": schedule, "deployed_at": at}
            if current is None:
                conn.execute(insert(pipelines).values(
                    name=name, state=ACTIVE, anchor=at, failures_in_row=0,
                    next_fire_at=_utc(next_fire_at) if next_fire_at else None, **values))
            else:
                if current["schedule"] != schedule:
                    values |= {"anchor": at, "next_fire_at": _utc(next_fire_at) if next_fire_at else None}
                conn.execute(update(pipelines).where(pipelines.c.name == name).values(**values))
        return version, known is None

    def all(self) -> list[DeployedPipeline]:
        """Every deployed pipeline, by name."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(pipelines).order_by(pipelines.c.name)).mappings().all()
        return [_deployed(row) for row in rows]

    def get(self, name: str) -> DeployedPipeline:
        """One deployed pipeline; names compare case-insensitively."""
        with self._engine.connect() as conn:
            row = conn.execute(select(pipelines).where(
                func.lower(pipelines.c.name) == name.strip().lower())).mappings().first()
        if row is None:
            with self._engine.connect() as conn:
                known = list(conn.execute(select(pipelines.c.name)).scalars())
            raise StoreError(f"no deployed pipeline named {name!r}{did_you_mean(name, known)} "
                             "(`jobgraph pipelines` lists them)")
        return _deployed(row)

    def snapshot(self, name: str, version: str) -> str:
        """The pipeline content of one version."""
        with self._engine.connect() as conn:
            value = conn.execute(select(pipeline_versions.c.snapshot).where(and_(
                pipeline_versions.c.name == name, pipeline_versions.c.version == version))).scalar()
        if value is None:
            raise StoreError(f"pipeline {name} has no version {version}")
        return str(value)

    def update(self, name: str, **values: object) -> None:
        """Change a deployed pipeline's state, next fire time, failure count or note."""
        clean = {k: _utc(v) if isinstance(v, datetime) else v for k, v in values.items()}
        with self._changing() as conn:
            conn.execute(update(pipelines).where(pipelines.c.name == name).values(**clean))

    def drop(self, name: str, purge: bool) -> Dropped:
        """Remove the schedule (the seed's drop_job_tasks); with purge, the pipeline's history too.

        A purge also works after a plain drop (by the name its runs and versions carry), and is
        refused while a run of the pipeline is in progress: its records are being written.
        """
        with self._changing() as conn:
            deployed = conn.execute(select(pipelines.c.name).where(
                func.lower(pipelines.c.name) == name.strip().lower())).scalar()
            if deployed is not None:
                conn.execute(delete(pipelines).where(pipelines.c.name == deployed))
            if not purge:
                if deployed is None:
                    raise StoreError(f"no deployed pipeline named {name!r} (`jobgraph pipelines` lists them)")
                return Dropped(str(deployed), True, 0)
            history = str(deployed) if deployed is not None else _history_name(conn, name)
            running = conn.execute(select(runs.c.run_id, runs.c.owner).where(and_(
                runs.c.pipeline == history, runs.c.state == RunState.RUNNING.value))).all()
            live = [(run_id, owner) for run_id, owner in running if owner is None or not owner_is_gone(owner)]
            if live:
                which = ", ".join(f"{run_id} (by {owner})" for run_id, owner in live)
                raise StoreError(f"pipeline {history} has a run in progress: {which}; its records are being "
                                 "written, so nothing was dropped or purged. Purge once it has ended")
            lost = [run_id for run_id, _ in running]
            # Lock what is deleted (PostgreSQL; SQLite's write lock is already held): a retry that claims one
            # of these runs meanwhile waits, then finds it gone, rather than write under a purge.
            doomed = select(runs.c.run_id).where(runs.c.pipeline == history, or_(
                runs.c.state != RunState.RUNNING.value,
                and_(runs.c.run_id.in_(lost), runs.c.owner.in_([owner for _, owner in running])))).with_for_update()
            run_ids = [row[0] for row in conn.execute(doomed)]
            conn.execute(delete(attempts).where(attempts.c.run_id.in_(run_ids)))
            conn.execute(delete(task_runs).where(task_runs.c.run_id.in_(run_ids)))
            conn.execute(delete(runs).where(runs.c.run_id.in_(run_ids)))
            conn.execute(delete(fires).where(fires.c.pipeline == history))
            conn.execute(delete(pipeline_versions).where(pipeline_versions.c.name == history))
        return Dropped(history, deployed is not None, len(run_ids))

    def record_fire(self, pipeline: str, scheduled_time: datetime, action: str, now: datetime,
                    run_id: str | None = None, note: str | None = None, next_fire_at: datetime | None = None) -> None:
        """Write down what the scheduler did at a fire time (started, skipped, queued, requested); with
        `next_fire_at`, move the pipeline's next fire time in the same transaction (one commit per fire)."""
        with self._changing() as conn:
            if next_fire_at is not None:
                conn.execute(update(pipelines).where(pipelines.c.name == pipeline).values(
                    next_fire_at=_utc(next_fire_at)))
            conn.execute(insert(fires).values(pipeline=pipeline, scheduled_time=_utc(scheduled_time),
                                              action=action, run_id=run_id, note=note, at=_utc(now)))

    def fires(self, pipeline: str) -> list[Fire]:
        """A pipeline's fires, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(fires).where(fires.c.pipeline == pipeline).order_by(fires.c.id)).mappings()
            return [_fire(row) for row in rows]

    def take_requests(self) -> list[Fire]:
        """Claim every REQUESTED fire (a `jobgraph trigger` for the service), so each is run once."""
        taken = []
        with self._engine.begin() as conn:
            rows = conn.execute(select(fires).where(fires.c.action == "REQUESTED")).mappings().all()
            for row in rows:
                claimed = conn.execute(update(fires).where(and_(
                    fires.c.id == row["id"], fires.c.action == "REQUESTED")).values(action="TAKEN"))
                if claimed.rowcount == 1:
                    taken.append(_fire({**row, "action": "TAKEN"}))
        return taken

    def acquire_lease(self, name: str, holder: str, now: datetime, ttl_secs: float) -> bool:
        """Take or renew a lease; True if `holder` has it until now + ttl. Only one holder at a time."""
        at = _utc(now)
        expires = _utc(datetime.fromtimestamp(now.timestamp() + ttl_secs, UTC))
        with self._engine.begin() as conn:
            renewed = conn.execute(update(leases).where(and_(
                leases.c.name == name, or_(leases.c.holder == holder, leases.c.expires_at < at))).values(
                holder=holder, expires_at=expires))
            if renewed.rowcount == 1:
                return True
            if conn.execute(select(leases.c.name).where(leases.c.name == name)).first() is not None:
                return False
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(leases).values(name=name, holder=holder, expires_at=expires))
        except IntegrityError:
            return False
        return True

    def lease_holder(self, name: str, now: datetime) -> str | None:
        """Who holds a lease that has not expired, if anyone."""
        with self._engine.connect() as conn:
            row = conn.execute(select(leases).where(and_(
                leases.c.name == name, leases.c.expires_at >= _utc(now)))).mappings().first()
        return None if row is None else str(row["holder"])

    def release_lease(self, name: str, holder: str) -> None:
        """Give a lease up (a clean shutdown), so another scheduler need not wait for it to expire."""
        with self._engine.begin() as conn:
            conn.execute(delete(leases).where(and_(leases.c.name == name, leases.c.holder == holder)))

    def lease(self, name: str) -> Lease | None:
        """The lease row as it stands, expired or not: who held it last."""
        with self._engine.connect() as conn:
            row = conn.execute(select(leases).where(leases.c.name == name)).mappings().first()
        return None if row is None else Lease(str(row["holder"]), _aware(row["expires_at"]))

    def take_lease(self, name: str, from_holder: str, holder: str, now: datetime, ttl_secs: float) -> bool:
        """Take a lease from a holder known to be dead, before it expires; True if `holder` has it now.

        Compare-and-set on the dead holder, so of several schedulers taking it over only one wins.
        """
        expires = _utc(datetime.fromtimestamp(now.timestamp() + ttl_secs, UTC))
        with self._engine.begin() as conn:
            taken = conn.execute(update(leases).where(and_(leases.c.name == name, leases.c.holder == from_holder))
                                 .values(holder=holder, expires_at=expires))
        return taken.rowcount == 1

    def withdraw_request(self, pipeline: str, scheduled_time: datetime) -> bool:
        """Take back a `trigger` request nobody has taken yet (compare-and-set); True if withdrawn."""
        with self._engine.begin() as conn:
            withdrawn = conn.execute(update(fires).where(and_(
                fires.c.pipeline == pipeline, fires.c.scheduled_time == _utc(scheduled_time),
                fires.c.action == "REQUESTED")).values(action="WITHDRAWN"))
        return withdrawn.rowcount > 0

    def request_outcome(self, pipeline: str, scheduled_time: datetime) -> Fire | None:
        """What the scheduler did with a request (the fire it recorded at the request's time), if anything yet."""
        with self._engine.connect() as conn:
            row = conn.execute(select(fires).where(and_(
                fires.c.pipeline == pipeline, fires.c.scheduled_time == _utc(scheduled_time),
                fires.c.action.not_in(("REQUESTED", "TAKEN", "WITHDRAWN")))).order_by(fires.c.id).limit(1)
            ).mappings().first()
        return None if row is None else _fire(row)


def _history_name(conn: Connection, name: str) -> str:
    """The name that runs, versions and fires carry: exactly `name`, else the one that matches it ignoring case."""
    found: set[str] = set()
    for column in (runs.c.pipeline, pipeline_versions.c.name, fires.c.pipeline):
        found.update(conn.execute(select(column).distinct().where(
            func.lower(column) == name.strip().lower())).scalars())
    if name.strip() in found:
        return name.strip()
    if len(found) == 1:
        return found.pop()
    if found:
        raise StoreError(f"{name!r} names several pipelines ({', '.join(sorted(found))}); give the exact name")
    raise StoreError(f"no pipeline named {name!r}: none is deployed, and no runs or versions carry that name")


def _fire(row: Any) -> Fire:
    return Fire(row["pipeline"], _aware(row["scheduled_time"]), row["action"], row["run_id"], row["note"],
                _aware(row["at"]))


def _deployed(row: object) -> DeployedPipeline:
    r = dict(row)  # type: ignore[call-overload]
    return DeployedPipeline(
        name=r["name"], version=r["version"], state=r["state"], schedule=r["schedule"],
        anchor=_aware(r["anchor"]), next_fire_at=_aware(r["next_fire_at"]),
        failures_in_row=r["failures_in_row"], deployed_at=_aware(r["deployed_at"]),
        note=r["note"],
    )
