"""Run a job as a container through the Docker Engine API, which both Docker and Podman serve.

It uses the `docker` SDK, with no `auto_remove` (Podman loses the exit code with it) and no followed
log stream (which can hang forever on Podman). On Podman's local socket a container is attached
before it starts (`attach.py`): its output streams into the attempt's LogWriter (redacted, capped)
from the event loop, and the stream's end says it exited, so one look at its state gives the exit
code; Podman's wait would also wait for the cleanup process conmon starts. Elsewhere (Docker, a
remote engine, an attach refused) it waits, and reads the engine's log in chunks. An exited
container is removed off the critical path. The SDK is blocking, so its calls run in this runner's
own thread pool. The job gets only its own empty out folder mounted, never jobgraph's logs. Every
container carries labels naming its run, job, attempt, pipeline and owner (host, pid and the pid's
start time), so containers left by an orchestrator that died are found and removed the next time a
runner connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from jobgraph.errors import JobgraphError, RunnerError
from jobgraph.owner import owner_label
from jobgraph.runners.attach import AttachedOutput, AttachError, attach
from jobgraph.runners.base import Cause, JobSpec, Outcome
from jobgraph.runners.engine_api import (
    LABEL,
    connect,
    create_container,
    explain,
    inspect,
    kill,
    output_chunks,
    remove,
    remove_orphans,
    remove_owned_by,
    remove_run_containers,
    state_after_exit,
    timed_out,
)
from jobgraph.runners.oom_watch import OomWatch, known_cgroup, memory_cgroup
from jobgraph.runners.output import (
    LogWriter,
    collect_return_file,
    prepare_out_folder,
    redactor_for,
    return_value_of,
    shown_env,
    tail,
)
from jobgraph.runners.service import EngineService, find_or_start
from jobgraph.states import AttemptStatus

if TYPE_CHECKING:
    from pydantic import BaseModel

    from jobgraph.config.model import Pipeline

WAIT_POLL_SECS = 5.0
"""How long one wait call blocks; between calls the running container's log file is refreshed."""

ENGINE_RETRIES = 5
"""Failed calls in a row (a second apart) before a running attempt is recorded as ERROR: engine gone."""

OUT_DIR = "/jobgraph/out"
"""Where the attempt's own out folder is mounted, so the job can write its return value."""

RETURN_FILE = "return"
"""The return-value file's name in the out folder."""

KILLED_STREAM_GRACE_SECS = 5.0
"""How long a killed container's attached stream may take to end before its log is read from the engine."""

T = TypeVar("T")


@dataclass
class EngineLog:
    """How much of a container's output is already in its log; one copy at a time (the lock)."""

    writer: LogWriter
    copied: int = 0
    closed: bool = False
    complete: bool = False
    """The whole output came through the attached stream: nothing to read from the engine's log."""
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class ContainerHandle:
    """A started container."""

    container: Container
    spec: JobSpec
    log: EngineLog
    attached: AttachedOutput | None = None
    oom: asyncio.Future[OomWatch | None] | None = None
    """The watch on the container's memory cgroup (oom_watch.py), being armed: a memory-limited container
    on a local engine only."""


class ContainerRunner:
    """Runner for containers on Podman or Docker."""

    def __init__(self, engine: str, folder: Path, images: Mapping[str, str] | None = None, cwd: Path | None = None,
                 max_parallel: int = 64) -> None:
        self._engine = engine
        self.name = engine
        self._images = images or {}
        self._libpod = False
        self._attach_socket: str | None = None
        self._local = False
        """The engine runs on this machine (a unix socket): its containers' cgroups can be watched."""
        self._attached: set[AttachedOutput] = set()
        self._folder = folder
        self._cwd = cwd or Path.cwd()
        self._threads = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="jobgraph-container")
        self._client: docker.DockerClient | None = None
        self._service: EngineService | None = None
        self._owner = owner_label()
        self._lock = asyncio.Lock()
        self._removals: set[asyncio.Future[None]] = set()

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, lambda: function(*args, **kwargs))

    async def client(self) -> docker.DockerClient:
        """Connect on first use (finding or starting the engine), then remove orphaned containers."""
        async with self._lock:
            if self._client is None:
                self._service = await self._call(find_or_start, self._engine, self._folder)
                try:
                    client, self._libpod = await self._call(connect, self._service.base_url)
                    await self._call(remove_orphans, client)
                except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                    raise RunnerError(f"cannot reach the {self._engine} engine at {self._service.base_url}: "
                                      f"{exc}") from None
                self._client = client
                self._local = self._service.base_url.startswith("unix://")
                if self._libpod and self._local:
                    self._attach_socket = self._service.base_url.removeprefix("unix://")
            return self._client

    async def open(self) -> None:
        """Find (or start) the engine and connect, so a missing engine stops the run before it starts."""
        await self.client()

    async def start(self, spec: JobSpec) -> ContainerHandle:
        """Create and start the container; a missing image or a refused start is a RunnerError.

        A cancel that arrives while the engine is still creating the container does not lose it:
        the creation finishes, then the container is killed and removed, then the cancel goes on.
        """
        starting = asyncio.ensure_future(self._start(spec))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(RunnerError):
                await self.cancel(await starting)
            raise

    async def _start(self, spec: JobSpec) -> ContainerHandle:
        client = await self.client()
        options = self._options(spec)
        image = self._images.get(spec.image, spec.image)
        out = _out_folder(spec)
        try:
            writer = LogWriter(spec.log_path, redactor_for(spec.secret_values), spec.log_limit)
        except OSError as exc:
            raise RunnerError(f"cannot create the log {spec.log_path}: {exc.strerror or exc}") from None
        attached: AttachedOutput | None = None
        try:
            if out is not None:
                try:
                    prepare_out_folder(out)
                except OSError as exc:
                    raise RunnerError(f"cannot create the out folder {out}: {exc.strerror or exc}") from None
            try:
                container = await self._call(create_container, client, image, options)
            except docker.errors.ImageNotFound:
                raise RunnerError(f"image '{image}' not found in the {self._engine} engine (no registry is "
                                  "used: build it first, e.g. `bash scripts/build-images.sh`)") from None
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise RunnerError(f"cannot create the container: {explain(exc)}") from None
            log = EngineLog(writer)
            attached = await self._attach(container, log)
            try:
                await self._call(container.start)
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                await self._call(remove, container)
                raise RunnerError(f"cannot start the container: {explain(exc)}") from None
        except BaseException:
            if attached is not None:
                await self._detach(attached)
            writer.close()
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            raise
        handle = ContainerHandle(container, spec, log, attached)
        if spec.memory_bytes and self._local:
            handle.oom = asyncio.ensure_future(self._arm_oom_watch(container))
        return handle

    async def _arm_oom_watch(self, container: Container) -> OomWatch | None:
        """Watch the running container's memory cgroup for OOM kills; None if it cannot be (it already ended).

        The cgroup is looked for where the engines put it first; only if it is elsewhere is the engine asked
        for the container's main process."""
        found = await self._call(known_cgroup, str(container.id))
        if found is None:
            pid = (await self._call(inspect, container)).get("State", {}).get("Pid")
            if not isinstance(pid, int) or pid <= 0:
                return None
            found = await self._call(memory_cgroup, pid)
        watch = await self._call(OomWatch.arm, found)
        if watch is not None:
            watch.listen(asyncio.get_running_loop())
        return watch

    async def _oom_watch(self, handle: ContainerHandle) -> OomWatch | None:
        """The attempt's OOM watch once armed (None if there is none), no longer listening: the container ended."""
        if handle.oom is None:
            return None
        try:
            watch = await handle.oom
        except Exception:
            return None
        if watch is not None:
            watch.check()
            watch.close()
        return watch

    async def _attach(self, container: Container, log: EngineLog) -> AttachedOutput | None:
        """On Podman's local socket, attach to the created container; None: wait and read its log instead."""
        if self._attach_socket is None or self._client is None:
            return None

        def store(piece: bytes) -> None:
            log.writer.write(piece)
            log.copied += len(piece)

        try:
            attached = await attach(self._attach_socket, str(self._client.api._version), str(container.id), store)
        except AttachError:
            return None
        self._attached.add(attached)
        return attached

    async def _detach(self, attached: AttachedOutput) -> None:
        await attached.close()
        self._attached.discard(attached)

    def _options(self, spec: JobSpec) -> dict[str, Any]:
        base = re.sub(r"[^a-z0-9]+", "-", (spec.container_name or spec.task).lower()).strip("-")[:40] or "job"
        name = f"jobgraph-{base}-{spec.run_id[:8]}-{spec.attempt}-{uuid.uuid4().hex[:6]}"
        environment = dict(spec.env)
        volumes = {str((self._cwd / host).resolve()): _bind(target) for host, target in spec.volumes.items()}
        out = _out_folder(spec)
        if out is not None:  # a new, empty folder of its own (see _start): nothing of jobgraph's is mounted
            volumes[str(out)] = {"bind": OUT_DIR, "mode": "rw"}
            environment["JOBGRAPH_RETURN_VALUE_FILE"] = f"{OUT_DIR}/{RETURN_FILE}"
        options: dict[str, Any] = {
            "command": list(spec.args) or None,
            "environment": environment,
            "name": name,
            "labels": {
                f"{LABEL}.run_id": spec.run_id, f"{LABEL}.task": spec.task, f"{LABEL}.attempt": str(spec.attempt),
                f"{LABEL}.pipeline": spec.pipeline, f"{LABEL}.owner": self._owner,
            },
            "working_dir": spec.workdir,
            "network_mode": spec.network,
            "volumes": volumes,
        }
        if spec.memory_bytes:
            options["mem_limit"] = spec.memory_bytes
        if spec.cpu:
            options["nano_cpus"] = int(min(spec.cpu, os.cpu_count() or 1) * 1e9)
        return options

    async def wait(self, handle: ContainerHandle) -> Outcome:
        """Wait for the container to exit, save its output, note an OOM kill, and remove it."""
        try:
            return await self._wait(handle)
        finally:  # however the wait ended, the OOM watch lets go of the cgroup's files
            await self._oom_watch(handle)

    async def _wait(self, handle: ContainerHandle) -> Outcome:
        container = handle.container
        if handle.attached is not None:
            ended = await self._wait_attached(handle)
            if ended is not None:
                return ended
        failures = 0
        while True:
            try:
                code = await self._call(self._wait_once, container)
                break
            except docker.errors.NotFound:
                await self._save_logs(handle, final=True)
                return Outcome(AttemptStatus.ERROR, None, "the container disappeared while it ran")
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                if timed_out(exc):
                    await self._save_logs(handle)
                    continue
                failures += 1
                if failures >= ENGINE_RETRIES:
                    await self._save_logs(handle, final=True)
                    return Outcome(AttemptStatus.ERROR, None, f"the {self._engine} engine stopped answering: {exc}")
                await asyncio.sleep(1.0)
        await self._save_logs(handle, final=True)
        if code == 0:
            self._remove_later(container)
            await self._oom_watch(handle)
            return Outcome(AttemptStatus.DONE, 0)
        state = (await self._call(inspect, container)).get("State", {})
        self._remove_later(container)
        return _outcome(handle.spec, code, state, await self._oom_watch(handle))

    async def _wait_attached(self, handle: ContainerHandle) -> Outcome | None:
        """The attached stream ended: the job exited; its exit code is in the engine's state at once.

        None when the stream broke or the engine does not say the container stopped: the caller
        waits as for an unattached container, reading the engine's log past what the stream brought.
        """
        attached = handle.attached
        assert attached is not None
        clean = await attached.ended()
        self._attached.discard(attached)
        handle.attached = None
        state = await self._call(state_after_exit, handle.container) if clean else None
        if state is None:
            return None
        handle.log.complete = True
        await self._save_logs(handle, final=True)
        self._remove_later(handle.container)
        return _outcome(handle.spec, int(state.get("ExitCode", -1)), state, await self._oom_watch(handle))

    def _wait_once(self, container: Container) -> int:
        """Block until the container exits, at most WAIT_POLL_SECS (then requests raises a timeout).

        On Podman, its own wait endpoint with a 10 ms interval: the Docker-compatible one polls every
        ~250 ms, which is most of a short job's time.
        """
        if not self._libpod:
            return int(container.wait(timeout=WAIT_POLL_SECS).get("StatusCode", -1))
        api = container.client.api
        response = api._post(api.base_url + f"/v4.0.0/libpod/containers/{container.id}/wait",
                             params={"condition": ["exited", "stopped"], "interval": "10ms"}, timeout=WAIT_POLL_SECS)
        api._raise_for_status(response)
        return int(response.text)

    def _remove_later(self, container: Container) -> None:
        """Remove an exited container off the critical path; `aclose` waits for every removal."""
        removal = asyncio.get_running_loop().run_in_executor(self._threads, remove, container)
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

    async def _save_logs(self, handle: ContainerHandle, final: bool = False) -> None:
        """Bring the log up to date with the engine's; `final`: close it and bring the return file back.

        Both in the runner's threads: a job decides how much it printed and what it left in its out
        folder, and neither may hold up the event loop.
        """
        await self._call(_copy_logs, handle.container, handle.log, final)
        out = _out_folder(handle.spec)
        if final and out is not None and handle.spec.return_value_path is not None:
            await self._call(collect_return_file, out, RETURN_FILE, handle.spec.return_value_path)

    async def logs(self, handle: ContainerHandle, tail_bytes: int) -> str:
        """The end of the saved output."""
        return tail(handle.spec.log_path, tail_bytes)

    async def read_return_value(self, handle: ContainerHandle, max_bytes: int) -> str | None:
        """The return file the job left in its out folder (moved back next to its log when it ended)."""
        return return_value_of(handle.spec.return_value_path, handle.spec.secret_values, max_bytes)

    async def adopt(self, reference: str, spec: JobSpec) -> ContainerHandle:
        """Nothing to re-attach to: what an earlier jobgraph left here is killed by recovery, not adopted."""
        raise RunnerError(f"the {self.name} runner cannot adopt an attempt ({reference})")

    def handle_ref(self, handle: ContainerHandle) -> str:
        """The container's name (recovery finds a lost run's containers by their labels)."""
        return str(handle.container.name)

    def describe(self, spec: JobSpec) -> dict[str, object]:
        """The image and the container create body the engine API would get; secrets as references."""
        options = self._options(spec)
        redactor = redactor_for(spec.secret_values)
        options["environment"] = shown_env(options["environment"], spec.secret_values)
        options["command"] = [redactor.text(part) for part in options["command"] or []] or None
        return {"runner": self._engine, "image": self._images.get(spec.image, spec.image), "create": options}

    async def cancel(self, handle: ContainerHandle) -> None:
        """Kill the container, keep what it printed, and remove it."""
        await self._call(kill, handle.container)
        await self._oom_watch(handle)
        if handle.attached is not None:
            attached, handle.attached = handle.attached, None
            if await attached.ended(KILLED_STREAM_GRACE_SECS):
                handle.log.complete = True
            await self._detach(attached)
        await self._save_logs(handle, final=True)
        await self._call(remove, handle.container)

    async def aclose(self) -> None:
        """Finish removing containers, close the API client, stop the engine service if we started it."""
        for attached in list(self._attached):
            await self._detach(attached)
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
            self._removals.clear()
        if self._client is not None:
            await self._call(remove_owned_by, self._client, self._owner)
            await self._call(self._client.close)
            self._client = None
        if self._service is not None:
            await self._call(self._service.stop)
            self._service = None
        self._threads.shutdown(wait=False)


def _out_folder(spec: JobSpec) -> Path | None:
    """The attempt's out folder, beside where the engine reads its return value (`attempt-N.out`)."""
    return spec.return_value_path.with_suffix(".out") if spec.return_value_path is not None else None


def _copy_logs(container: Container, log: EngineLog, final: bool) -> None:
    """Stream the container's output from the engine into its log, skipping what an earlier copy stored.

    The engine's log is read again from its start each time (the API has no byte offset), in chunks:
    memory stays bounded whatever the job printed, and once the log is cut nothing more is fetched.
    """
    with log.lock:
        if log.closed:
            return
        try:
            if not log.writer.cut and not log.complete:
                position = 0
                for chunk in output_chunks(container):
                    end = position + len(chunk)
                    if end > log.copied:
                        log.writer.write(chunk[max(0, log.copied - position):])
                        log.copied = end
                    position = end
                    if log.writer.cut:
                        break
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            pass  # the engine is gone or the container removed: keep what was stored
        finally:
            if final:
                log.writer.close()
                log.closed = True


def _outcome(spec: JobSpec, code: int, state: Mapping[str, Any], oom: OomWatch | None = None) -> Outcome:
    """How an attempt that exited with `code` ended, from the engine's state of its container and, where its
    memory cgroup was watched, whether the OOM killer struck in it (a child of the job's included)."""
    if code == 0:
        return Outcome(AttemptStatus.DONE, 0)
    limit = f"memory limit {spec.memory_bytes // (1 << 20)} MiB" if spec.memory_bytes else ""
    if state.get("OOMKilled"):
        reason = f"OOMKilled: out of memory ({limit or 'no limit'}), exit code {code}"
        return Outcome(AttemptStatus.FAILED, code, reason, cause=Cause.OOM)
    if oom is not None and (oom.killed or oom.conclusive):  # the cgroup's count is the answer, whatever the code
        if oom.killed:
            return Outcome(AttemptStatus.FAILED, code, f"OOMKilled: out of memory ({limit or 'no limit'}): the kernel "
                           f"killed a process of the job, exit code {code}", cause=Cause.OOM)
        return Outcome(AttemptStatus.FAILED, code, f"exit code {code}" + (
            " (killed by SIGKILL, not for its memory)" if code == 137 else ""))
    if code == 137 and limit:
        # Podman 4.3 never sets OOMKilled here: a SIGKILL under a memory limit is the kernel's OOM killer.
        return Outcome(AttemptStatus.FAILED, code, f"killed (exit code 137) under a {limit}: out of memory",
                       cause=Cause.OOM)
    return Outcome(AttemptStatus.FAILED, code, f"exit code {code}")


def _bind(target: str) -> dict[str, str]:
    path, _, mode = target.partition(":")
    return {"bind": path, "mode": "ro" if mode == "ro" else "rw"}


def build(name: str, pipeline: Pipeline, _settings: BaseModel | None, folder: Path,
          cwd: Path | None) -> ContainerRunner:
    """The registry's constructor: `name` is the engine (podman or docker)."""
    return ContainerRunner(name, folder, pipeline.container_images, cwd=cwd)


def clean_up_lost_run(name: str, run_id: str, folder: Path) -> int:
    """Remove a lost run's containers (by their run label); 0 when no engine answers (the owner-label
    sweep removes them when a container runner next connects)."""
    try:
        return remove_run_containers(name, folder, [run_id])
    except JobgraphError:
        return 0
