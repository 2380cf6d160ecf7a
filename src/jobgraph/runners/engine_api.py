"""The Engine API calls the container runner makes, one call each: connect, create, look at a
container's state, read its log, list, kill and remove containers.

Blocking (the `docker` SDK): the runner calls them in its thread pool. Errors of a call whose failure
changes nothing (kill, remove, a sweep) are swallowed; the others raise the SDK's or requests' own.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils
import requests.exceptions
from docker.models.containers import Container

from jobgraph.owner import owner_is_gone
from jobgraph.runners.output import CHUNK_BYTES
from jobgraph.runners.service import find_or_start

LABEL = "jobgraph"
"""The prefix of the labels every jobgraph container carries."""

API_VERSION = "1.41"
"""The Engine API version spoken: Podman 4 serves it, as does every Docker since 20.10 (an older one
gets its own, from `_ping`)."""

STATE_RETRY_DELAYS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Seconds before each look at a container's state once its attached stream ended (about 2 s in
all, for a conmon the machine's load holds up; then the runner falls back to Podman's wait)."""


def connect(base_url: str, max_pool_size: int = 64) -> tuple[docker.DockerClient, bool]:
    """A client for the engine at `base_url`, and whether it is Podman, from one `_ping`.

    The SDK's default asks the engine's `/version` first, and Podman answers that by running conmon,
    the OCI runtime and more with `--version`: about 0.4 s of CPU each time, on the cores the jobs
    need. `_ping`'s headers say the same: the API version served and, from Podman, its own.
    """
    client = docker.DockerClient(base_url=base_url, version=API_VERSION, timeout=60, max_pool_size=max_pool_size)
    try:
        api = client.api
        response = api._get(api.base_url + "/_ping")
        api._raise_for_status(response)
        served = response.headers.get("Api-Version")
        libpod = "Libpod-Api-Version" in response.headers
        if served and docker.utils.version_lt(served, API_VERSION):  # an older Docker: speak its version
            client.close()
            client = docker.DockerClient(base_url=base_url, version=served, timeout=60, max_pool_size=max_pool_size)
    except BaseException:
        client.close()
        raise
    if base_url.startswith("unix://"):
        # No proxy or .netrc applies to a local socket; requests would read the whole environment
        # for them on every call (about half of its CPU time per call).
        client.api.trust_env = False
    return client, libpod


def create_container(client: docker.DockerClient, image: str, options: Mapping[str, Any]) -> Container:
    """Create the container from the runner's options; one API call (the SDK's `containers.create` inspects it
    again at once, and the runner needs only its id and name)."""
    arguments = dict(options)
    volumes: dict[str, dict[str, str]] = arguments.pop("volumes")
    host_config = client.api.create_host_config(
        binds=volumes, network_mode=arguments.pop("network_mode"), mem_limit=arguments.pop("mem_limit", None),
        nano_cpus=arguments.pop("nano_cpus", None))
    created = client.api.create_container(image, host_config=host_config,
                                          volumes=[bind["bind"] for bind in volumes.values()], **arguments)
    return client.containers.prepare_model({"Id": created["Id"], "Name": options["name"]})


def state_after_exit(container: Container) -> dict[str, Any] | None:
    """Podman's state of a container whose attached stream just ended; None if it does not say stopped.

    conmon closes the stream a moment before it writes the exit file, so a few short retries. Each
    look syncs the state from that file (Podman's wait would also wait for the cleanup process).
    """
    api = container.client.api
    for delay in STATE_RETRY_DELAYS:
        time.sleep(delay)
        try:
            response = api._get(api.base_url + f"/v4.0.0/libpod/containers/{container.id}/json")
            api._raise_for_status(response)
            state = dict(response.json().get("State", {}))
        except (docker.errors.DockerException, requests.exceptions.RequestException, ValueError):
            return None
        if state.get("Status") in ("stopped", "exited"):
            return state
    return None


def labelled(client: docker.DockerClient, label: str) -> list[Container]:
    """Containers with this label, as the list call gives them: the SDK would inspect each one again,
    one call per container on the engine, and fail when another client removes one in between."""
    return list(client.containers.list(all=True, filters={"label": label}, sparse=True))


def remove_orphans(client: docker.DockerClient) -> list[str]:
    """Remove containers whose jobgraph owner on this host is gone; return their names."""
    removed = []
    for container in labelled(client, f"{LABEL}.owner"):
        if owner_is_gone((container.attrs.get("Labels") or {}).get(f"{LABEL}.owner", "")):
            remove(container)
            removed.append(str((container.attrs.get("Names") or [container.id])[0]).lstrip("/"))
    return removed


def remove_owned_by(client: docker.DockerClient, owner: str) -> None:
    """The last safety net: nothing this process started outlives it."""
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        for container in labelled(client, f"{LABEL}.owner={owner}"):
            remove(container)


def remove_run_containers(engine: str, folder: Path, run_ids: list[str]) -> int:
    """Remove every container of these runs (the recovery of runs whose orchestrator died)."""
    service = find_or_start(engine, folder)
    removed = 0
    try:
        client, _ = connect(service.base_url, max_pool_size=1)
        try:
            for run_id in run_ids:
                for container in labelled(client, f"{LABEL}.run_id={run_id}"):
                    remove(container)
                    removed += 1
        finally:
            client.close()
    finally:
        service.stop()
    return removed


def output_chunks(container: Container, tail: int | None = None) -> Iterator[bytes]:
    """stdout and stderr as the engine stores them (its last `tail` lines), as chunks of at most CHUNK_BYTES.

    The SDK would read each multiplexed frame whole, and an engine may make one frame of a job's
    gigabyte-long line; here a frame is read a chunk at a time. jobgraph never asks for a TTY, so
    the stream is always multiplexed: an 8-byte header (stream, 3 zero bytes, big-endian length).
    """
    api = container.client.api
    response = api._get(api._url("/containers/{0}/logs", container.id),
                        params={"stdout": 1, "stderr": 1, "follow": 0, "timestamps": 0,
                                "tail": "all" if tail is None else tail},
                        stream=True)
    try:
        api._raise_for_status(response)
        raw = response.raw
        while len(header := _read_exact(raw, 8)) == 8:
            (length,) = struct.unpack(">xxxxL", header)
            while length:
                piece = raw.read(min(length, CHUNK_BYTES))
                if not piece:
                    return
                length -= len(piece)
                yield piece
    finally:
        response.close()


def _read_exact(raw: Any, count: int) -> bytes:
    data = b""
    while len(data) < count:
        piece = raw.read(count - len(data))
        if not piece:
            break
        data += piece
    return data


def inspect(container: Container) -> dict[str, Any]:
    """The engine's view of the container (why it failed: OOMKilled); empty if the engine cannot say."""
    try:
        container.reload()
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return {}
    return dict(container.attrs)


def kill(container: Container) -> None:
    """SIGKILL the container; one already gone is no error."""
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        container.kill()


def remove(container: Container) -> None:
    """Remove the container, running or not; one already gone is no error."""
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        container.remove(force=True)


def timed_out(exc: Exception) -> bool:
    """A wait call that simply ran out of time (requests reports a read timeout as a ConnectionError)."""
    return isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc).lower()


def explain(exc: Exception) -> str:
    """The engine's own words for a refused call, else the error's."""
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)
