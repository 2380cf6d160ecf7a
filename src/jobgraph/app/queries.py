"""What the HTTP API and the web page read from the store, as plain JSON-ready values: one place for both.

Everything goes through the store's SQLAlchemy engine, whose pool hands each thread its own
connection, so a web server may call these from worker threads at once. Runs are paged newest first
by a keyset cursor over (started_at, run_id), the order of the index ix_runs_started_at: a page
costs the same at run 10 and at run 10,000. No value here ever comes from a job's environment or
secrets: logs, errors and return values are stored redacted, and the graph names only structure.
An attempt's log, read from its file rather than the store, is app/logs.py's.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, String, and_, exists, func, or_, select, type_coerce
from sqlalchemy.sql.elements import ColumnElement

from jobgraph.errors import JobgraphError, StoreError
from jobgraph.selection import loaded
from jobgraph.states import RunState
from jobgraph.store import Store
from jobgraph.store.deployments import ACTIVE, DeployedPipeline, Deployments
from jobgraph.store.records import aware, utc
from jobgraph.store.tables import attempts, notifications, pipeline_versions, runs, task_runs

Json = dict[str, Any]

MAX_PAGE = 500
"""The most runs one page of the runs list holds."""

class NotFound(StoreError):
    """What was asked for is not in the store (the API answers 404)."""


class BadRequest(JobgraphError):
    """A parameter is malformed (the API answers 400)."""


class Refused(JobgraphError):
    """What was asked for exists but is not shown: a log that is not a regular file (the API answers 403)."""


def iso(value: datetime | None) -> str | None:
    """A time as ISO-8601 UTC with a Z, or None."""
    return None if value is None else utc(value).isoformat().replace("+00:00", "Z")


def stored_iso(value: datetime | str | None) -> str | None:
    """A time column read raw (`raw_time`) as `iso` gives it: SQLite's UTC text is rewritten, not parsed.

    A 5,000-job run has 20,000 times; parsing each into a datetime and formatting it again was two
    thirds of the run detail's time. Anything else (a datetime) goes through `iso`.
    """
    if isinstance(value, str) and len(value) == 26 and value[10] == " " and value[19] == ".":
        return f"{value[:10]}T{value[11:19] if value.endswith('.000000') else value[11:]}Z"
    return iso(aware(value))


def raw_time(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """A time column as text `stored_iso` rewrites without parsing: SQLite's stored UTC text as it is;
    PostgreSQL's timestamptz formatted the same way by the server (its driver would build a datetime)."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI:SS.US").label(column.key)
    return type_coerce(column, String).label(column.key)


_LATER = task_runs.alias("later")
_LATEST = ~exists().where(and_(_LATER.c.run_id == task_runs.c.run_id, _LATER.c.task == task_runs.c.task,
                               _LATER.c.run_attempt > task_runs.c.run_attempt))
"""A job's row of the latest graph run attempt that ran it: its current state."""


def _run_json(row: Any) -> Json:
    return {"run_id": row["run_id"], "pipeline": row["pipeline"], "state": row["state"],
            "run_attempt": row["run_attempt"], "started_at": iso(aware(row["started_at"])),
            "finished_at": iso(aware(row["finished_at"])), "trigger": row["trigger"],
            "version": row["pipeline_version"], "selection": loaded(row["selection"])}


def _pipeline_json(deployed: DeployedPipeline, last: Any) -> Json:
    return {"name": deployed.name, "state": deployed.state, "version": deployed.version,
            "schedule": deployed.schedule,
            "last_run": None if last is None else {"run_id": last["run_id"], "state": last["state"],
                                                    "started_at": iso(aware(last["started_at"]))},
            "next_fire_at": iso(deployed.next_fire_at) if deployed.state == ACTIVE else None}


def _last_run(conn: Connection, name: str) -> Any:
    return conn.execute(select(runs.c.run_id, runs.c.state, runs.c.started_at).where(runs.c.pipeline == name)
                        .order_by(runs.c.started_at.desc(), runs.c.run_id.desc()).limit(1)).mappings().first()


def pipelines(records: Store) -> list[Json]:
    """Every deployed pipeline with its schedule, state, version, last run and next fire time (none if suspended)."""
    deployed = Deployments(records).all()
    with records.engine.connect() as conn:
        return [_pipeline_json(each, _last_run(conn, each.name)) for each in deployed]


def pipeline(records: Store, name: str) -> Json:
    """One deployed pipeline, as in `pipelines`, with when it was deployed and why it is suspended."""
    try:
        deployed = Deployments(records).get(name)
    except StoreError as exc:
        raise NotFound(str(exc)) from None
    with records.engine.connect() as conn:
        found = _pipeline_json(deployed, _last_run(conn, deployed.name))
        versions = conn.execute(select(pipeline_versions.c.version, pipeline_versions.c.created_at).where(
            pipeline_versions.c.name == deployed.name).order_by(pipeline_versions.c.created_at.desc())).all()
    return {**found, "deployed_at": iso(deployed.deployed_at), "failures_in_row": deployed.failures_in_row,
            "note": deployed.note,
            "versions": [{"version": version, "created_at": iso(aware(at))} for version, at in versions]}


def graph_of(snapshot: str) -> Json:
    """The jobs of a stored pipeline snapshot: name, predecessors, runner, pool, image, whether it is the finalizer,
    and whether it fans out (`for_each`: its copies are the run's jobs named `JOB[i]`).

    Only the structure: a job's args, env and for_each list stay out, whatever they hold.
    """
    document = json.loads(snapshot)
    defaults = document.get("defaults") or {}

    def job(fields: Json, finalizer: bool) -> Json:
        return {"name": fields["name"], "after": list(fields.get("after") or ()),
                "runner": fields.get("runner") or defaults.get("runner"),
                "pool": fields.get("pool") or defaults.get("pool"), "image": fields.get("image"),
                "finalizer": finalizer, "fans_out": fields.get("for_each") is not None}

    found = [job(fields, False) for fields in document.get("jobs") or ()]
    if document.get("finalizer"):
        found.append(job(document["finalizer"], True))
    return {"jobs": found}


def pipeline_graph(records: Store, name: str, version: str) -> Json:
    """The graph of one version of a pipeline (by its exact name, as its versions carry it)."""
    with records.engine.connect() as conn:
        snapshot = conn.execute(select(pipeline_versions.c.snapshot).where(and_(
            pipeline_versions.c.name == name, pipeline_versions.c.version == version))).scalar()
    if snapshot is None:
        raise NotFound(f"pipeline {name!r} has no version {version!r}")
    return graph_of(str(snapshot))


@dataclass(frozen=True)
class Cursor:
    """Where a page of runs ends: the next page starts with the runs strictly older than this one."""

    started_at: datetime
    run_id: str

    def text(self) -> str:
        """The cursor as an opaque URL-safe string."""
        raw = json.dumps([iso(self.started_at), self.run_id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def parse(text: str) -> Cursor:
        """A cursor from `text`; BadRequest if it is not one this API made."""
        try:
            at, run_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            cursor = Cursor(utc(aware(str(at))), str(run_id))  # utc(): a time out of range fails here, not in SQL
        except (ValueError, TypeError, OverflowError, binascii.Error):
            cursor = None
        if cursor is None or "\x00" in cursor.run_id:
            raise BadRequest(f"cursor {text[:80]!r} is not one this API gave out")
        return cursor


def _job_counts(conn: Connection, page: Sequence[Any]) -> dict[str, Counter[str]]:
    """Each run's jobs counted by state, as they stand now (their rows of the latest graph run attempt).

    A run never retried has one row per job, of graph run attempt 1: those are counted straight off
    the primary key. Only retried runs look for a later row of each job (`_LATEST`): with a
    5,000-job run on the page, that probe per job cost 16 ms on SQLite and 56 ms on PostgreSQL, 7 without.
    """
    counts: dict[str, Counter[str]] = {row["run_id"]: Counter() for row in page}
    first = [row["run_id"] for row in page if row["run_attempt"] == 1]
    retried = [row["run_id"] for row in page if row["run_attempt"] != 1]
    per_state = select(task_runs.c.run_id, task_runs.c.state, func.count()).group_by(task_runs.c.run_id,
                                                                                     task_runs.c.state)
    for ids, current in ((first, task_runs.c.run_attempt == 1), (retried, _LATEST)):
        if ids:
            for run_id, job_state, count in conn.execute(per_state.where(task_runs.c.run_id.in_(ids), current)):
                counts[run_id][job_state] = count
    return counts


def run_page(records: Store, pipeline: str | None = None, state: str | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[list[Json], str | None]:
    """One page of runs, newest first, each with its jobs counted by state; and the next page's cursor (or None)."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    if state is not None and state.upper() not in RunState.__members__:
        raise BadRequest(f"unknown run state {state!r}; use one of {', '.join(RunState)}")
    query = select(runs.c.run_id, runs.c.pipeline, runs.c.state, runs.c.run_attempt, runs.c.started_at,
                   runs.c.finished_at, runs.c.trigger, runs.c.pipeline_version, runs.c.selection).order_by(
        runs.c.started_at.desc(), runs.c.run_id.desc()).limit(limit + 1)
    if pipeline:
        query = query.where(runs.c.pipeline == pipeline)
    if state:
        query = query.where(runs.c.state == state.upper())
    if cursor:
        after = Cursor.parse(cursor)
        query = query.where(or_(runs.c.started_at < utc(after.started_at),
                                and_(runs.c.started_at == utc(after.started_at), runs.c.run_id < after.run_id)))
    with records.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
        page = rows[:limit]
        counts = _job_counts(conn, page)
    listed = [{**_run_json(row), "job_counts": dict(counts[row["run_id"]])} for row in page]
    more = len(rows) > limit
    last = page[-1] if page else None
    next_cursor = Cursor(aware(last["started_at"]), last["run_id"]).text() if more and last is not None else None
    return listed, next_cursor


_RUN_COLUMNS = tuple(column for column in runs.c if column.key != "snapshot")
"""A run's row without its pipeline snapshot: a 5,000-job pipeline's is 1.7 MB, and only its graph needs it."""


def run_row(conn: Connection, run_id: str, columns: Sequence[ColumnElement[Any]] = _RUN_COLUMNS) -> Any:
    """A run's row (without its snapshot, unless `columns` ask for it); NotFound if there is no such run."""
    row = conn.execute(select(*columns).where(runs.c.run_id == run_id)).mappings().first()
    if row is None:
        whole = "" if len(run_id) >= 36 else " (the API takes a run's whole id, as GET /api/v1/runs lists it)"
        raise NotFound(f"no run with id {run_id!r}{whole}")
    return row


def _job_columns(dialect: str) -> tuple[ColumnElement[Any], ...]:
    """What the run detail shows of each job (times raw: see `stored_iso`), in _job_json's order."""
    return (task_runs.c.task, task_runs.c.state, task_runs.c.attempts, raw_time(task_runs.c.started_at, dialect),
            raw_time(task_runs.c.finished_at, dialect), task_runs.c.duration_secs, task_runs.c.return_value,
            task_runs.c.error_message, task_runs.c.item)


def _attempt_columns(dialect: str) -> tuple[ColumnElement[Any], ...]:
    """What the run detail shows of each attempt, in _attempt_json's order."""
    return (attempts.c.task, attempts.c.attempt, attempts.c.run_attempt, attempts.c.status, attempts.c.exit_code,
            attempts.c.error, raw_time(attempts.c.started_at, dialect), raw_time(attempts.c.finished_at, dialect),
            attempts.c.duration_secs, attempts.c.runner)


def _job_json(row: Sequence[Any]) -> Json:
    """A job as the API shows it, from a row of _job_columns (a tuple: mapping 5,000 rows by name costs more).

    A fanned-out job's copy (`extract[3]`) names its job in `copy_of` and has its `item` (any JSON value);
    both are null for every other job.
    """
    name, state, tried, started_at, finished_at, duration, value, error, item = row
    return {"name": name, "state": state, "attempts": tried, "started_at": stored_iso(started_at),
            "finished_at": stored_iso(finished_at), "duration_secs": duration, "return_value": value,
            "error": error, "copy_of": None if item is None else name[:name.rindex("[")],
            "item": None if item is None else json.loads(item)}


def _attempt_json(row: Sequence[Any]) -> Json:
    """An attempt as the API shows it, from a row of _attempt_columns."""
    job, attempt, run_attempt, status, exit_code, error, started_at, finished_at, duration, runner = row
    return {"job": job, "attempt": attempt, "run_attempt": run_attempt, "status": status, "exit_code": exit_code,
            "error": error, "started_at": stored_iso(started_at), "finished_at": stored_iso(finished_at),
            "duration_secs": duration, "runner": runner}


def run_detail(records: Store, run_id: str) -> Json:
    """One run (exact id) with every job as it stands now and every attempt, oldest first."""
    with records.engine.connect() as conn:
        row = run_row(conn, run_id)
        job_rows = conn.execute(select(*_job_columns(conn.dialect.name)).where(task_runs.c.run_id == run_id, _LATEST)
                                .order_by(task_runs.c.task)).all()
        attempt_rows = conn.execute(select(*_attempt_columns(conn.dialect.name)).where(attempts.c.run_id == run_id)
                                    .order_by(attempts.c.id)).all()
        notification_rows = conn.execute(select(*_notification_columns(conn.dialect.name))
                                         .where(notifications.c.run_id == run_id).order_by(notifications.c.id)).all()
    jobs = [_job_json(job) for job in job_rows]
    counts = Counter(job["state"] for job in jobs)
    run = {**_run_json(row), "job_counts": dict(counts), "scheduled_time": iso(aware(row["scheduled_time"])),
           "owner": row["owner"], "cancel_requested_at": iso(aware(row["cancel_requested_at"])),
           "params": run_params(row["params"])}
    return {"run": run, "jobs": jobs, "attempts": [_attempt_json(attempt) for attempt in attempt_rows],
            "notifications": [_notification_json(sent) for sent in notification_rows]}


def _notification_columns(dialect: str) -> tuple[ColumnElement[Any], ...]:
    """What the run detail shows of each notification, in _notification_json's order."""
    return (notifications.c.event, notifications.c.task, notifications.c.target, notifications.c.state,
            notifications.c.tries, notifications.c.error, raw_time(notifications.c.created_at, dialect),
            raw_time(notifications.c.finished_at, dialect))


def _notification_json(row: Sequence[Any]) -> Json:
    """A notification as the API shows it: what it told (event, job), to whom (never a secret URL), how it went."""
    event, job, target, state, tries, error, created_at, finished_at = row
    return {"event": event, "job": job, "target": target, "state": state, "tries": tries, "error": error,
            "created_at": stored_iso(created_at), "finished_at": stored_iso(finished_at)}


def run_params(text: str | None) -> Json:
    """A run's parameter values (runs.params) as an object; {} for a run whose pipeline declares none."""
    return {} if not text else dict(json.loads(text))


def run_signature(records: Store, run_id: str) -> tuple[Any, ...]:
    """A cheap fingerprint of everything `run_detail` shows: it changes whenever the run, a job or an attempt does.

    Jobs only move forward through their states within a graph run attempt, and each step also
    changes a count, a start or an end; attempts gain rows, statuses and end times.
    """
    with records.engine.connect() as conn:
        row = run_row(conn, run_id)
        current = task_runs.c.run_attempt == 1 if row["run_attempt"] == 1 else _LATEST  # see _job_counts
        jobs = conn.execute(select(task_runs.c.state, func.count(), func.sum(task_runs.c.attempts),
                                   func.count(task_runs.c.started_at), func.count(task_runs.c.finished_at))
                            .where(task_runs.c.run_id == run_id, current).group_by(task_runs.c.state)
                            .order_by(task_runs.c.state)).all()
        tried = conn.execute(select(func.count(), func.max(attempts.c.id), func.count(attempts.c.finished_at),
                                    func.count(attempts.c.runner))
                             .where(attempts.c.run_id == run_id)).one()
    return (row["state"], row["run_attempt"], row["finished_at"], row["cancel_requested_at"],
            tuple(tuple(job) for job in jobs), tuple(tried))


def run_graph(records: Store, run_id: str) -> Json:
    """The graph of the pipeline as the run ran it (its stored snapshot)."""
    with records.engine.connect() as conn:
        row = run_row(conn, run_id, (runs.c.snapshot,))
    return graph_of(str(row["snapshot"]))
