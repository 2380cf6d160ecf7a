"""What the SPCS runner reads of a job service before it drops it: its status, its containers, its log.

SPCS keeps a job service's log only as long as the service: `SYSTEM$GET_SERVICE_LOGS` reads its
containers' logs, and after `DROP SERVICE` there is nothing to read (the event table aside, which
jobgraph does not query). So the runner reads it when the service ended (`ended`), and also just before
it drops one still running (`log_so_far`, for a cancel or a timeout): what a cancelled or timed-out job
printed is kept, as the container runner keeps it. The text is redacted and capped on its way to the
attempt's log (output.LogWriter); `log_lines` lines per container are asked for. Before a drop the
runner bounds that reading (`BEFORE_DROP_SECS`) and ignores its failures: a cancel stays quick, and a
log that cannot be read never keeps a service running.

A service PENDING past `pending_limit_secs` is read too (`stuck`): its container's status message (an
image SPCS cannot pull), else its compute pool's state (no node for it), is the attempt's error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace

from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec, Outcome
from jobgraph.runners.output import LogWriter
from jobgraph.runners.redaction import redactor_for
from jobgraph.runners.spcs_statements import (
    Statement,
    describe_service,
    drop_service,
    service_logs,
    show_compute_pools,
    show_service_containers,
)
from jobgraph.runners.spcs_states import last_change, outcome_of, pending_outcome
from jobgraph.states import AttemptStatus

Run = Callable[[Statement], Awaitable[list[dict[str, object]]]]
"""How the runner sends one statement (in a worker thread, on its session)."""

Row = dict[str, object]

BEFORE_DROP_SECS = 10.0
"""The most a cancel or a timeout waits to read a service's log (and how it ended) before dropping it anyway."""


async def status_row(run: Run, name: str) -> Row | None:
    """One service's row (`DESCRIBE SERVICE`); None if Snowflake has no such service."""
    try:
        rows = await run(describe_service(name))
    except RunnerError as exc:
        if "does not exist" in str(exc).lower() or "not authorized" in str(exc).lower():
            return None
        raise
    return rows[0] if rows else None


async def log_text(run: Run, name: str, instance: str, container: str, lines: int) -> str:
    """One container's log as SPCS gives it now (its last `lines` lines)."""
    rows = await run(service_logs(name, instance, container, lines))
    values = list(rows[0].values()) if rows else []
    return str(values[0]) if values and values[0] is not None else ""


async def save_log(run: Run, spec: JobSpec, name: str, containers: Iterable[Mapping[str, object]],
                   lines: int) -> str | None:
    """Each container's log, once, into the attempt's log (redacted, capped); why it could not be read, if so."""
    texts: list[str] = []
    problem: str | None = None
    for container in containers:
        instance, container_name = container.get("instance_id"), container.get("container_name")
        if instance is None or container_name is None:  # a service that never got a node (PENDING, SUSPENDED)
            continue
        try:
            texts.append(await log_text(run, name, str(instance), str(container_name), lines))
        except RunnerError as exc:
            problem = str(exc)
    if not texts:
        return problem or "Snowflake listed no container to read a log from"
    try:
        writer = LogWriter(spec.log_path, redactor_for(spec.secret_values), spec.log_limit)
    except FileExistsError:
        return None  # written by an earlier jobgraph that saw the same end
    try:
        for text in texts:
            writer.write(text.encode("utf-8", "replace") + (b"" if text.endswith("\n") or not text else b"\n"))
    finally:
        writer.close()
    return problem


async def log_so_far(run: Run, spec: JobSpec, name: str, lines: int) -> None:
    """What a service still running (or pending) printed so far, into the attempt's log, before it is dropped."""
    await save_log(run, spec, name, await run(show_service_containers(name)), lines)


async def ended(run: Run, spec: JobSpec, name: str, row: Mapping[str, object], lines: int, by_jobgraph: bool,
                adopted: bool) -> Outcome:
    """How an ended service's attempt ended (its containers' status, message and exit code), its log saved.
    An adopted one ends at its last change (`updated_on`), not when this jobgraph saw it."""
    status = str(row.get("status", "")).upper()
    containers: list[Row] = []
    if status not in ("DELETING", "DELETED"):
        with contextlib.suppress(RunnerError):
            containers = await run(show_service_containers(name))
    unread = await save_log(run, spec, name, containers, lines)
    pool = str(row.get("compute_pool") or spec.pool).upper()
    outcome = outcome_of(name, status, containers, pool, by_jobgraph=by_jobgraph, unread=unread)
    if adopted and outcome.status != AttemptStatus.CANCELLED:
        outcome = replace(outcome, ended_at=last_change(row))
    return outcome


async def stuck(run: Run, spec: JobSpec, name: str, row: Mapping[str, object], limit: float) -> Outcome | None:
    """The ERROR of a service PENDING past `limit`, with SPCS's reason, once it is dropped; None if it is no
    longer PENDING (it started, or ended, since the poll: it is followed on)."""
    latest = await status_row(run, name)
    if latest is None or str(latest.get("status", "")).upper() != "PENDING":
        return None
    containers: list[Row] = []
    with contextlib.suppress(RunnerError):
        containers = await run(show_service_containers(name))
    pool = str(row.get("compute_pool") or spec.pool).upper()
    pools: list[Row] = []
    with contextlib.suppress(RunnerError):
        pools = await run(show_compute_pools())
    drop_failed: str | None = None
    try:
        await run(drop_service(name))
    except RunnerError as exc:
        drop_failed = str(exc)
    pool_row = next((found for found in pools if str(found.get("name", "")).upper() == pool), None)
    return pending_outcome(name, limit, containers, pool, pool_row, drop_failed)
