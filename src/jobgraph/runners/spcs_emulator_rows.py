"""What the SPCS emulator answers: Podman's list of its containers, as the rows SPCS's statements return.

One function per statement's rows (SHOW JOB SERVICES / DESCRIBE SERVICE, SHOW SERVICE CONTAINERS IN
SERVICE, SHOW COMPUTE POOLS), with Snowflake's lower-case column names, from the entries of Podman's
libpod list (State, ExitCode, StartedAt, ExitedAt, Labels...) and the labels the emulator gave each
container. The mapping of states: not started PENDING (SUSPENDED in a suspended pool; in a pool STARTING,
which has no node, they stay PENDING), running RUNNING, exit 0 DONE, another exit FAILED with "container
exited with code N", renamed by a DROP or being removed DELETING, anything else INTERNAL_ERROR naming
Podman's state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobgraph.config.model import Pool

LABEL = "jobgraph.spcs-emulator"
"""The label every emulated service's container carries (=1); its other labels are `LABEL.<what>`."""

DROPPING = ".dropping"
"""Appended to the container's name when DROP SERVICE begins: it is DELETING until it is gone."""

OWNER = "JOBGRAPH_SPCS_EMULATOR"
"""The owner shown for emulated services and pools: never a Snowflake role."""

Row = dict[str, object]

STARTED = "jobgraph.StartedAt"
FINISHED = "jobgraph.FinishedAt"
"""Keys the emulator adds to the list entry of an ended container: the inspected times, which the list gives
only to the second (an adopted job's real end is read from them)."""

UNQUOTED = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
"""Snowflake's unquoted identifier."""

NO_NODE = frozenset({"SUSPENDED", "STARTING"})
"""Pool states in which no service starts: a SUSPENDED pool's services are SUSPENDED, a STARTING pool's (one
that never gets a node, as when none is free) stay PENDING."""

PENDING_STATES = frozenset({"created", "configured", "initialized"})
"""Podman's states of a container not started yet."""
_RUNNING_STATES = frozenset({"running", "paused", "stopping"})
_ENDED_STATES = frozenset({"exited", "stopped"})


def labels_of(entry: Mapping[str, Any]) -> dict[str, str]:
    """A listed container's labels."""
    return dict(entry.get("Labels") or {})


def label(entry: Mapping[str, Any], what: str) -> str | None:
    """One of the emulator's labels of a listed container; None when it is empty or missing."""
    return labels_of(entry).get(f"{LABEL}.{what}") or None


def stored_name(name: str) -> str:
    """A name as Snowflake stores it: an unquoted identifier upper-cased, anything else as written."""
    return name.upper() if UNQUOTED.fullmatch(name) else name


def status_of(entry: Mapping[str, Any], pools: Mapping[str, str | None]) -> tuple[str, str, str]:
    """(service status, container status, container message) of an emulated service, from Podman's state;
    `pools` maps a pool to the state it was given (SUSPENDED: its services never start; STARTING: they wait)."""
    state = str(entry.get("State", "")).lower()
    if state == "removing" or any(str(name).endswith(DROPPING) for name in entry.get("Names") or ()):
        return "DELETING", "UNKNOWN", "being dropped"
    if state in PENDING_STATES:
        pool = label(entry, "pool") or ""
        if pools.get(pool) == "SUSPENDED":
            return "SUSPENDED", "PENDING", f"compute pool {pool} is suspended"
        return "PENDING", "PENDING", "Waiting to start"
    if state in _RUNNING_STATES:
        return "RUNNING", "READY", "Running"
    if state in _ENDED_STATES:
        code = int(entry.get("ExitCode", 0))
        if code == 0:
            return "DONE", "DONE", "Completed successfully"
        return "FAILED", "FAILED", f"container exited with code {code}"
    return "INTERNAL_ERROR", "UNKNOWN", f"Podman reports the container as {state or 'nothing'}"


def service_row(entry: Mapping[str, Any], pools: Mapping[str, str | None]) -> Row:
    """A row of SHOW JOB SERVICES (and DESCRIBE SERVICE)."""
    status = status_of(entry, pools)[0]
    return {
        "name": label(entry, "name"), "status": status, "database_name": label(entry, "database"),
        "schema_name": label(entry, "schema"), "owner": OWNER, "compute_pool": label(entry, "pool"),
        "dns_name": None, "current_instances": 1 if status == "RUNNING" else 0, "target_instances": 1,
        "min_ready_instances": 1, "min_instances": 1, "max_instances": 1, "auto_resume": False,
        "external_access_integrations": label(entry, "external_access_integrations"),
        "created_on": _created(entry), "updated_on": _updated(entry), "resumed_on": None, "suspended_on": None,
        "auto_suspend_secs": 0, "comment": label(entry, "comment"), "owner_role_type": "ROLE",
        "query_warehouse": label(entry, "query_warehouse"), "is_job": True, "is_async_job": True,
        "spec_digest": label(entry, "spec_digest"), "is_upgrading": False,
    }


def container_row(entry: Mapping[str, Any], pools: Mapping[str, str | None]) -> Row:
    """The one row of SHOW SERVICE CONTAINERS IN SERVICE; as Snowflake documents, a service with no instance
    yet (PENDING, SUSPENDED) has every instance and container field NULL."""
    status, container_status, message = status_of(entry, pools)
    row: Row = {
        "database_name": label(entry, "database"), "schema_name": label(entry, "schema"),
        "service_name": label(entry, "name"), "service_status": status, "instance_id": None,
        "instance_status": None, "container_name": None, "status": None, "message": None, "image_name": None,
        "image_digest": None, "restart_count": None, "start_time": None, "last_exit_code": None,
        "last_restart_time": None,
    }
    if status not in ("PENDING", "SUSPENDED"):
        row.update({
            "instance_id": "0",
            "instance_status": {"RUNNING": "READY", "DONE": "SUCCEEDED", "FAILED": "FAILED"}.get(status, "TERMINATING"),
            "container_name": label(entry, "container"), "status": container_status, "message": message,
            "image_name": label(entry, "image"), "image_digest": entry.get("ImageID"), "restart_count": 0,
            "start_time": _started(entry),
            "last_exit_code": int(entry.get("ExitCode", 0)) if status in ("DONE", "FAILED") else None,
        })
    return row


def pool_rows(states: Mapping[str, str | None], configured: Mapping[str, Pool],
              entries: Iterable[Mapping[str, Any]]) -> list[Row]:
    """The rows of SHOW COMPUTE POOLS: each listed pool (its nodes from the pipeline's pool, when it has one)
    and the services pending or running in it."""
    jobs: dict[str, int] = {}
    for entry in entries:
        if status_of(entry, states)[0] in ("PENDING", "RUNNING"):
            in_pool = label(entry, "pool") or ""
            jobs[in_pool] = jobs.get(in_pool, 0) + 1
    rows: list[Row] = []
    for name, state in sorted(states.items()):
        pool = configured.get(name)
        running = jobs.get(name, 0)
        nodes = pool.max_parallel if pool is not None else 1
        up = 0 if state in NO_NODE else nodes
        rows.append({
            "name": name, "state": state or ("ACTIVE" if running else "IDLE"), "min_nodes": 1,
            "max_nodes": nodes, "active_nodes": min(running, up), "idle_nodes": max(up - running, 0),
            "target_nodes": nodes, "num_services": 0, "num_jobs": running, "auto_suspend_secs": 0,
            "auto_resume": False, "instance_family": pool.instance_family if pool is not None else None,
            "created_on": None, "resumed_on": None, "updated_on": None, "owner": OWNER,
            "comment": "a pool of jobgraph's SPCS emulator (Podman on this machine), not Snowflake",
            "is_exclusive": False, "application": None,
        })
    return rows


def _epoch(value: object) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) and value > 0 else None


def _rfc3339(value: object) -> datetime | None:
    """Podman's RFC 3339 times (nanoseconds cut to what datetime holds); None for none or Go's zero time."""
    text = re.sub(r"(\.\d{6})\d*", r"\1", str(value or "")).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.year > 1 else None


def _created(entry: Mapping[str, Any]) -> datetime | None:
    return _rfc3339(entry.get("Created"))


def _started(entry: Mapping[str, Any]) -> datetime | None:
    """When the container started: the inspected time to the microsecond, else the list's whole second."""
    return _rfc3339(entry.get(STARTED)) or _epoch(entry.get("StartedAt"))


def _updated(entry: Mapping[str, Any]) -> datetime | None:
    """When the service last changed: its end (inspected, to the microsecond), else its start, else its creation."""
    if entry.get("Exited"):
        return _rfc3339(entry.get(FINISHED)) or _epoch(entry.get("ExitedAt"))
    return _started(entry) or _created(entry)
