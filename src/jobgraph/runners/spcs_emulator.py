"""A local SPCS emulator, not Snowflake: it answers the few statements jobgraph's SPCS runner sends by
running each job service's container through Podman.

`EmulatorSession` is an `spcs_session.SqlSession`: it recognises exactly the statement texts of
`spcs_statements` (whitespace aside) and reads their bind values; any other statement is an error
naming it. It keeps no state of its own: Podman is its state. A job service is one container, named
after the service and labelled `jobgraph.spcs-emulator=1` with its name, pool, container, image and
the statement's clauses, so a jobgraph killed with -9 and started again finds its services by name
(adopt) as it would in Snowflake. What it does:

- `EXECUTE JOB SERVICE ... ASYNC = TRUE ... FROM SPECIFICATION` creates and starts the container
  (spcs_emulator_spec.py reads the specification; the image through the pipeline's `container_images`;
  no network unless the statement names external access integrations). A pool that is not listed is
  Snowflake's "does not exist" error, a service name taken its "already exists".
- `SHOW JOB SERVICES LIKE`, `DESCRIBE SERVICE`, `SHOW SERVICE CONTAINERS IN SERVICE`: Podman's state
  as SPCS's rows (one list call each; spcs_emulator_rows.py): not started PENDING (SUSPENDED in a
  suspended pool), running RUNNING, exit 0 DONE, other exits FAILED with "container exited with code
  N", being dropped DELETING; a removed container is a service that does not exist.
- `SYSTEM$GET_SERVICE_LOGS`: the container's last N lines (at most 100 KB, as Snowflake caps them).
- `DROP SERVICE IF EXISTS`: renames the container (DELETING from then on, in every session), kills and
  removes it.
- `SHOW COMPUTE POOLS`: the pipeline's pools, or those of JOBGRAPH_SPCS_EMULATOR_POOLS
  (`NAME[:STATE],...`, e.g. `PR_STD_POOL_XS,PR_STD_POOL_S:SUSPENDED`). A pool listed `:STARTING` never
  gets a node: its services stay PENDING (what SPCS shows when no node is free) until it is listed
  otherwise.
Errors carry `errno` and `sqlstate` as the connector's do (2003 does not exist, 2002 already exists).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import requests.exceptions

from jobgraph.errors import RunnerError
from jobgraph.runners.engine_api import connect, create_container, explain, kill, output_chunks, remove
from jobgraph.runners.service import EngineService, find_or_start
from jobgraph.runners.spcs_emulator_rows import (
    DROPPING,
    FINISHED,
    LABEL,
    NO_NODE,
    PENDING_STATES,
    STARTED,
    UNQUOTED,
    Row,
    container_row,
    label,
    labels_of,
    pool_rows,
    service_row,
    stored_name,
)
from jobgraph.runners.spcs_emulator_spec import SpecError, parse_spec
from jobgraph.runners.spcs_statements import escape_value

if TYPE_CHECKING:
    from jobgraph.config.model import Pool
    from jobgraph.runners.spcs_spec import SpcsSettings

POOLS_VARIABLE = "JOBGRAPH_SPCS_EMULATOR_POOLS"
"""Overrides the pools SHOW COMPUTE POOLS lists: `NAME[:STATE],...` (a missing pool, a suspended one)."""

LOG_LIMIT_BYTES = 100 << 10
"""SYSTEM$GET_SERVICE_LOGS returns at most this much, the end of it (Snowflake's documented 100 KB)."""

_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_EXECUTE = re.compile(
    r"EXECUTE JOB SERVICE IN COMPUTE POOL IDENTIFIER\(%s\) NAME = IDENTIFIER\(%s\) ASYNC = TRUE"
    r"(?P<warehouse> QUERY_WAREHOUSE = IDENTIFIER\(%s\))?(?P<comment> COMMENT = %s)?"
    r"(?: EXTERNAL_ACCESS_INTEGRATIONS = \((?P<integrations>IDENTIFIER\(%s\)(?: ?, ?IDENTIFIER\(%s\))*)\))?"
    r" FROM SPECIFICATION %s")
_SHOW_CONTAINERS = re.compile(r"SHOW SERVICE CONTAINERS IN SERVICE ([A-Za-z_][A-Za-z0-9_$]*)")
"""The one statement with its service name inline (checked, unquoted: Snowflake takes no quoted name there)."""


class EmulatorError(RunnerError):
    """A statement the emulator refuses, shaped like the connector's errors (`errno`, `sqlstate`, `msg`)."""

    def __init__(self, errno: int, sqlstate: str, msg: str) -> None:
        self.errno = errno
        self.sqlstate = sqlstate
        self.msg = msg
        super().__init__(f"{errno:06d} ({sqlstate}): {msg}")


def does_not_exist(kind: str, name: str) -> EmulatorError:
    """Snowflake's error for an object that is not there (or not visible to the role)."""
    return EmulatorError(2003, "02000", f"SQL compilation error:\n{kind} '{name}' does not exist or not authorized.")


def resolve_identifier(value: object) -> str:
    """The name Snowflake resolves IDENTIFIER(value) to: unquoted upper-cased, quoted as written."""
    if not isinstance(value, str):
        raise EmulatorError(1003, "42000", f"SQL compilation error: IDENTIFIER() needs a string, not {value!r}")
    text = value.strip()
    if len(text) >= 2 and text.startswith('"') and text.endswith('"') and '"' not in text[1:-1].replace('""', ""):
        return text[1:-1].replace('""', '"')
    if UNQUOTED.fullmatch(text) and len(text) <= 255:
        return text.upper()
    raise EmulatorError(1003, "42000", f"SQL compilation error: invalid identifier {value!r}")


def like(pattern: object) -> re.Pattern[str]:
    """SHOW ... LIKE's pattern (case-insensitive, `%` and `_` wildcards, `\\` escapes) as a regex."""
    if not isinstance(pattern, str):
        raise EmulatorError(1003, "42000", f"SQL compilation error: LIKE needs a string, not {pattern!r}")
    parts: list[str] = []
    escaped = False
    for character in pattern:
        if escaped:
            parts.append(re.escape(character))
            escaped = False
        elif character == "\\":
            escaped = True
        else:
            parts.append({"%": ".*", "_": "."}.get(character) or re.escape(character))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


class EmulatorSession:
    """A SqlSession whose statements run job containers on Podman: an emulator, never Snowflake."""

    def __init__(self, settings: SpcsSettings, container_images: Mapping[str, str],
                 pools: Mapping[str, Pool] | None = None, folder: Path | None = None) -> None:
        self._settings = settings
        self._images = dict(container_images)
        self._pools = dict(pools or {})
        self._folder = folder or Path(os.environ.get("JOBGRAPH_HOME", ".jobgraph"))
        self._lock = threading.Lock()
        self._client: docker.DockerClient | None = None
        self._service: EngineService | None = None
        self._statements: dict[str, Callable[..., list[Row]]] = {
            "SHOW JOB SERVICES LIKE %s": self._show_job_services,
            "DESCRIBE SERVICE IDENTIFIER(%s)": self._describe_service,
            "SELECT SYSTEM$GET_SERVICE_LOGS(%s, %s, %s, %s)": self._service_logs,
            "DROP SERVICE IF EXISTS IDENTIFIER(%s)": self._drop_service,
            "SHOW COMPUTE POOLS": self._show_compute_pools,
        }

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[Row]:
        """Run one statement of spcs_statements; rows with lower-case column names, as the connector's."""
        text = " ".join(sql.split())
        if text.count("%s") != len(params):
            raise EmulatorError(1003, "42000", f"the statement has {text.count('%s')} bind marker(s) and "
                                               f"{len(params)} value(s): {text}")
        match = _EXECUTE.fullmatch(text)
        if match is not None:
            return self._execute_job_service(match, params)
        match = _SHOW_CONTAINERS.fullmatch(text)
        if match is not None and not params:
            return self._show_service_containers(match[1])
        handler = self._statements.get(text)
        if handler is None:
            raise EmulatorError(1003, "42000", f"the SPCS emulator does not emulate this statement: {text}")
        return handler(*params)

    def close(self) -> None:
        """Close the Podman client and stop the API service if this session started it (containers go on)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._service is not None:
                started = self._service.process is not None
                self._service.stop()
                self._service = None
                if started:
                    shutil.rmtree(self._folder / f"spcs-emulator-{os.getpid()}", ignore_errors=True)

    def _podman(self) -> docker.DockerClient:
        """Podman's API, found or started on first use; another engine is refused."""
        with self._lock:
            if self._client is None:
                # a Podman API service of this process's own, if one must be started: another jobgraph's (or a
                # container runner's) at the same path would be replaced by it, and stopped with it
                service = find_or_start("podman", self._folder / f"spcs-emulator-{os.getpid()}")
                try:
                    client, libpod = connect(service.base_url)
                except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                    service.stop()
                    raise RunnerError(f"the SPCS emulator cannot reach Podman at {service.base_url}: {exc}") from None
                if not libpod:
                    client.close()
                    service.stop()
                    raise RunnerError(f"the SPCS emulator runs on Podman only; {service.base_url} is another engine")
                self._client, self._service = client, service
            return self._client

    def _containers(self, name: str | None = None) -> list[dict[str, Any]]:
        """The emulated services' containers as Podman lists them (one call), or the one named; a service
        accepted but not started (its EXECUTE cut short by a kill, its pool suspended until now) is started
        first, as Snowflake's scheduler would."""
        found = self._listed(name)
        if self._start_accepted(found):
            found = self._listed(name)
        return found

    def _start_accepted(self, entries: list[dict[str, Any]]) -> bool:
        """Start the created containers of pools that run jobs; whether there were any. Starting one that an
        EXECUTE in flight starts too is harmless (the engine answers 304)."""
        states = self._pool_states()
        waiting = [entry for entry in entries if str(entry.get("State", "")).lower() in PENDING_STATES
                   and not any(str(name).endswith(DROPPING) for name in entry.get("Names") or ())
                   and (pool := label(entry, "pool")) in states and states[pool] not in NO_NODE]
        client = self._podman()
        for entry in waiting:
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                client.containers.prepare_model({"Id": entry["Id"]}).start()
        return bool(waiting)

    def _listed(self, name: str | None) -> list[dict[str, Any]]:
        api = self._podman().api
        labels = [f"{LABEL}=1", *([f"{LABEL}.name={name}"] if name is not None else [])]
        try:
            response = api._get(api.base_url + "/v4.0.0/libpod/containers/json",
                                params={"all": "true", "filters": json.dumps({"label": labels})})
            api._raise_for_status(response)
            listed = response.json() or []
        except (docker.errors.DockerException, requests.exceptions.RequestException, ValueError) as exc:
            raise RunnerError(f"the SPCS emulator's Podman did not answer: {exc}") from None
        found = [entry for entry in listed if name is None or labels_of(entry).get(f"{LABEL}.name") == name]
        for entry in found:
            if entry.get("Exited"):  # its times to the microsecond (ended services are few: the runner drops them)
                with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException,
                                         ValueError):
                    response = api._get(api.base_url + f"/v4.0.0/libpod/containers/{entry['Id']}/json")
                    api._raise_for_status(response)
                    state = response.json().get("State") or {}
                    entry[STARTED], entry[FINISHED] = state.get("StartedAt"), state.get("FinishedAt")
        return found

    def _one(self, name: object) -> dict[str, Any]:
        resolved = resolve_identifier(name)
        found = self._containers(resolved)
        if not found:
            raise does_not_exist("Service", resolved)
        return found[0]

    def _pool_states(self) -> dict[str, str | None]:
        """Pool name -> the state it was given (None: IDLE or ACTIVE by what runs in it)."""
        configured = os.environ.get(POOLS_VARIABLE)
        if configured is None:
            return {stored_name(name): None for name in self._pools}
        states: dict[str, str | None] = {}
        for entry in filter(None, (part.strip() for part in configured.split(","))):
            name, _, state = entry.partition(":")
            states[stored_name(name.strip())] = state.strip().upper() or None
        return states

    def _execute_job_service(self, match: re.Match[str], params: tuple[object, ...]) -> list[Row]:
        values = list(params)
        pool, name = resolve_identifier(values.pop(0)), resolve_identifier(values.pop(0))
        warehouse = resolve_identifier(values.pop(0)) if match["warehouse"] else None
        comment = values.pop(0) if match["comment"] else None
        integrations = [resolve_identifier(value) for value in values[:-1]]
        spec_text = values[-1]
        if not isinstance(spec_text, str) or (comment is not None and not isinstance(comment, str)):
            raise EmulatorError(1003, "42000", "SQL compilation error: COMMENT and SPECIFICATION take strings")
        if pool not in self._pool_states():
            raise does_not_exist("Compute pool", pool)
        if not _CONTAINER_NAME.fullmatch(name):
            raise EmulatorError(1003, "42000", f"the emulator names each container after its service, and "
                                               f"{name!r} cannot name a Podman container")
        if self._containers(name):
            raise EmulatorError(2002, "42710", f"SQL compilation error:\nObject '{name}' already exists.")
        try:
            plan = parse_spec(spec_text, self._images)
        except SpecError as exc:
            raise EmulatorError(395018, "22023", f"Invalid spec: {exc}") from None
        labels = {
            LABEL: "1", f"{LABEL}.name": name, f"{LABEL}.pool": pool, f"{LABEL}.container": plan.container_name,
            f"{LABEL}.image": plan.spec_image, f"{LABEL}.database": stored_name(self._settings.database or ""),
            f"{LABEL}.schema": stored_name(self._settings.schema_name or ""),
            f"{LABEL}.comment": comment or "", f"{LABEL}.query_warehouse": warehouse or "",
            f"{LABEL}.external_access_integrations": json.dumps(integrations),
            f"{LABEL}.spec_digest": hashlib.sha256(spec_text.encode("utf-8", "surrogatepass")).hexdigest(),
        }
        options: dict[str, Any] = {
            "command": plan.command, "entrypoint": plan.entrypoint, "environment": plan.environment,
            "name": name, "labels": labels, "volumes": {},
            "network_mode": None if integrations else "none",  # SPCS jobs reach nothing outside without one
        }
        if plan.memory_bytes:
            options["mem_limit"] = max(plan.memory_bytes, 6 << 20)
        if plan.cpu:
            options["nano_cpus"] = int(min(plan.cpu, os.cpu_count() or 1) * 1e9)
        client = self._podman()
        try:
            container = create_container(client, plan.image, options)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            if isinstance(exc, docker.errors.ImageNotFound) or "reference format" in explain(exc):
                raise EmulatorError(395018, "22023", f"image '{plan.image}' (for '{plan.spec_image}') is not in "
                                    "Podman: map the spec's image to a local one with the pipeline's "
                                    "container_images, or build it (`bash scripts/build-images.sh`)") from None
            if self._containers(name):
                raise EmulatorError(2002, "42710", f"SQL compilation error:\nObject '{name}' already exists.") from None
            raise RunnerError(f"the SPCS emulator could not create the container of {name}: {explain(exc)}") from None
        if self._pool_states()[pool] not in NO_NODE:
            try:
                container.start()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                remove(container)
                raise RunnerError(f"the SPCS emulator could not start the container of {name}: {explain(exc)}") \
                    from None
        return [{"status": f"Job {name} successfully created (by jobgraph's SPCS emulator, not Snowflake)."}]

    def _show_job_services(self, pattern: object) -> list[Row]:
        wanted = like(pattern)
        states = self._pool_states()
        rows = [service_row(entry, states) for entry in self._containers()]
        return sorted((row for row in rows if wanted.fullmatch(str(row["name"]))), key=lambda row: str(row["name"]))

    def _describe_service(self, name: object) -> list[Row]:
        return [service_row(self._one(name), self._pool_states())]

    def _show_service_containers(self, name: object) -> list[Row]:
        return [container_row(self._one(name), self._pool_states())]

    def _service_logs(self, name: object, instance_id: object, container_name: object, lines: object) -> list[Row]:
        entry = self._one(name)
        service = label(entry, "name")
        column = "system$get_service_logs(" + ", ".join(map(escape_value, (name, instance_id, container_name, lines)))
        if str(instance_id) != "0":
            raise EmulatorError(395017, "22023", f"instance {instance_id!r} of service {service} does not exist")
        if container_name != label(entry, "container"):
            raise EmulatorError(395017, "22023", f"container {container_name!r} of service {service} does not exist")
        if isinstance(lines, bool) or not isinstance(lines, int | str) or not str(lines).isdigit():
            raise EmulatorError(1003, "42000", f"the number of log lines must be a whole number, not {lines!r}")
        container = self._podman().containers.prepare_model({"Id": entry["Id"]})
        text = bytearray()
        try:
            for chunk in output_chunks(container, int(lines)):
                text += chunk
                del text[:-LOG_LIMIT_BYTES]
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RunnerError(f"the SPCS emulator could not read the logs of {service}: {explain(exc)}") from None
        return [{column.lower() + ")": text.decode(errors="replace")}]

    def _drop_service(self, name: object) -> list[Row]:
        resolved = resolve_identifier(name)
        found = self._containers(resolved)
        client = self._podman()
        for entry in found:
            container = client.containers.prepare_model({"Id": entry["Id"]})
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                # renamed first: every session sees it DELETING, never as a job that exited (killed) on its own
                client.api.rename(entry["Id"], f"{resolved}{DROPPING}")
            kill(container)
            remove(container)
        if found and self._containers(resolved):
            raise RunnerError(f"the SPCS emulator could not remove the container of {resolved}")
        if not found:
            return [{"status": f"Drop statement executed successfully ({resolved} already dropped)."}]
        return [{"status": f"{resolved} successfully dropped."}]

    def _show_compute_pools(self) -> list[Row]:
        return pool_rows(self._pool_states(), {stored_name(name): pool for name, pool in self._pools.items()},
                         self._containers())
