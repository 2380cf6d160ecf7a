"""What Snowflake says about a job service, and how that becomes the attempt's Outcome.

Plain rows in, as `SHOW JOB SERVICES` / `DESCRIBE SERVICE` and `SHOW SERVICE CONTAINERS IN SERVICE` give
them (lower-case column names), so the mapping reads beside Snowflake's documentation of DESCRIBE SERVICE
(PENDING, RUNNING, FAILED, DONE, SUSPENDING, SUSPENDED, DELETING, DELETED, INTERNAL_ERROR) and the
CANCELLING/CANCELLED a cancelled job shows. The exit code is the `main` container's `last_exit_code`, a
column of SHOW SERVICE CONTAINERS since Snowflake's 2024_08 bundle (release note bcr-1787); where an account
does not have it, none is recorded (never made up from the status), and the container's status message
says why a job failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from jobgraph.runners.base import Cause, Outcome
from jobgraph.states import AttemptStatus

WAITING = frozenset({"PENDING", "RUNNING"})
"""The job service has not ended: keep polling."""

GONE = frozenset({"CANCELLING", "CANCELLED", "DELETING", "DELETED"})
"""Stopped from outside the job: by jobgraph's cancel (CANCELLED), else by someone else (an ERROR)."""

TERMINAL = frozenset({"DONE", "FAILED", "INTERNAL_ERROR", "SUSPENDING", "SUSPENDED"}) | GONE
"""The job service ended (or was ended): its outcome is read once and it is polled no more."""


def container_message(containers: Iterable[Mapping[str, object]]) -> str:
    """The containers' status and message, as a person reads them (`main: FAILED, exit 1...`)."""
    parts = []
    for row in containers:
        status = str(row.get("status") or "").strip()
        message = str(row.get("message") or "").strip()
        name = str(row.get("container_name") or "main")
        text = ": ".join(part for part in (status, message) if part)
        if text:
            parts.append(f"{name} {text}")
    return "; ".join(parts)


def exit_code(containers: Iterable[Mapping[str, object]]) -> int | None:
    """The `main` container's last exit code (the first container's if none is named main), or None."""
    rows = list(containers)
    main = [row for row in rows if row.get("container_name") == "main"] or rows[:1]
    code = main[0].get("last_exit_code") if main else None
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code)
    return None


def last_change(row: Mapping[str, object]) -> datetime | None:
    """When a service last changed (`updated_on`), if Snowflake says so and it is after its `created_on`."""
    updated, created = row.get("updated_on"), row.get("created_on")
    if not isinstance(updated, datetime) or updated.tzinfo is None:
        return None
    if isinstance(created, datetime) and created.tzinfo is not None and updated <= created:
        return None
    return updated


def outcome_of(name: str, status: str, containers: Iterable[Mapping[str, object]], pool: str,
               by_jobgraph: bool = False, unread: str | None = None) -> Outcome:
    """How an ended job service's attempt ended. `by_jobgraph` says jobgraph cancelled it; `unread` why its log
    could not be read (said in the error of a job that did not end DONE)."""
    status = status.upper()
    containers = list(containers)
    code = exit_code(containers)
    detail = container_message(containers)
    said = f" ({detail})" if detail else ""
    log = f"; its log could not be read: {unread}" if unread else ""
    if status == "DONE":
        return Outcome(AttemptStatus.DONE, code)
    if status == "FAILED":
        return Outcome(AttemptStatus.FAILED, code, f"job service {name} FAILED: {detail or 'no message from SPCS'}"
                       f"{log}")
    if status == "INTERNAL_ERROR":
        return Outcome(AttemptStatus.ERROR, code, f"Snowflake reported INTERNAL_ERROR for job service {name}{said}"
                       f"{log}: not the job's doing, so it may be retried")
    if status in ("SUSPENDING", "SUSPENDED"):
        return Outcome(AttemptStatus.ERROR, code, f"compute pool {pool} was suspended under job service {name} "
                       f"(status {status}){said}{log}: resume the pool (ALTER COMPUTE POOL {pool} RESUME)",
                       cause=Cause.LOST)
    if status in GONE:
        if by_jobgraph:
            return Outcome(AttemptStatus.CANCELLED, None, f"cancelled by jobgraph (DROP SERVICE {name})")
        verb = "cancelled" if status.startswith("CANCEL") else "dropped"
        return Outcome(AttemptStatus.ERROR, None, f"job service {name} was {verb} by someone else, not by jobgraph "
                       f"(status {status}){said}")
    return Outcome(AttemptStatus.ERROR, None, f"job service {name} has status {status or 'none'}, which jobgraph "
                   f"does not know{said}")


def pending_outcome(name: str, limit: float, containers: Iterable[Mapping[str, object]], pool: str,
                    pool_row: Mapping[str, object] | None, drop_failed: str | None) -> Outcome:
    """The ERROR of an attempt whose job service stayed PENDING for `limit` seconds (`pending_limit_secs`):
    SPCS's reason (the container's status message, such as an image it cannot pull; else the compute pool's
    state, when no node took the service), and whether the service was dropped."""
    reason = container_message(containers)
    if not reason:
        where = f"compute pool {pool}"
        if pool_row is not None and pool_row.get("state"):
            where += f" is {pool_row['state']}"
            if pool_row.get("active_nodes") is not None and pool_row.get("max_nodes") is not None:
                where += f", {pool_row['active_nodes']} of {pool_row['max_nodes']} nodes active"
        reason = f"SPCS has placed it on no node yet ({where})"
    dropped = (f"dropped it (DROP SERVICE {name})" if drop_failed is None else
               f"DROP SERVICE {name} failed, it may still start: {drop_failed}")
    return Outcome(AttemptStatus.ERROR, None, f"job service {name} stayed PENDING for {limit:g}s "
                   f"(runners.spcs.pending_limit_secs): {reason}; {dropped}")
