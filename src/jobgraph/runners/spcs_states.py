"""What Snowflake says about a job service, and how that becomes the attempt's Outcome.

Plain rows in, as `SHOW JOB SERVICES` / `DESCRIBE SERVICE` and `SHOW SERVICE CONTAINERS IN SERVICE` give
them (lower-case column names), so the mapping reads beside Snowflake's documentation of DESCRIBE SERVICE
(PENDING, RUNNING, FAILED, DONE, SUSPENDING, SUSPENDED, DELETING, DELETED, INTERNAL_ERROR) and the
CANCELLING/CANCELLED a cancelled job shows. SPCS exposes no container exit code: none is recorded, and the
container's status message says why a job failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from jobgraph.runners.base import Outcome
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


def outcome_of(name: str, status: str, containers: Iterable[Mapping[str, object]], pool: str,
               by_jobgraph: bool = False, unread: str | None = None) -> Outcome:
    """How an ended job service's attempt ended. `by_jobgraph` says jobgraph cancelled it; `unread` why its log
    could not be read (said in the error of a job that did not end DONE)."""
    status = status.upper()
    detail = container_message(containers)
    said = f" ({detail})" if detail else ""
    log = f"; its log could not be read: {unread}" if unread else ""
    if status == "DONE":
        return Outcome(AttemptStatus.DONE, None)
    if status == "FAILED":
        return Outcome(AttemptStatus.FAILED, None, f"job service {name} FAILED: {detail or 'no message from SPCS'}"
                       f"{log}; kept for inspection (DROP SERVICE {name} removes it)")
    if status == "INTERNAL_ERROR":
        return Outcome(AttemptStatus.ERROR, None, f"Snowflake reported INTERNAL_ERROR for job service {name}{said}"
                       f"{log}: not the job's doing, so it may be retried")
    if status in ("SUSPENDING", "SUSPENDED"):
        return Outcome(AttemptStatus.ERROR, None, f"compute pool {pool} was suspended under job service {name} "
                       f"(status {status}){said}{log}: resume the pool (ALTER COMPUTE POOL {pool} RESUME)")
    if status in GONE:
        if by_jobgraph:
            return Outcome(AttemptStatus.CANCELLED, None, f"cancelled by jobgraph (DROP SERVICE {name})")
        verb = "cancelled" if status.startswith("CANCEL") else "dropped"
        return Outcome(AttemptStatus.ERROR, None, f"job service {name} was {verb} by someone else, not by jobgraph "
                       f"(status {status}){said}")
    return Outcome(AttemptStatus.ERROR, None, f"job service {name} has status {status or 'none'}, which jobgraph "
                   f"does not know{said}")
