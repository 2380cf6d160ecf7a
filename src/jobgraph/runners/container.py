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

The create body is container_options.py's, the copy of the engine's log container_log.py's, and the
reading of how a container ended (an OOM kill or not) container_exit.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from jobgraph.errors import JobgraphError, RunnerError
from jobgraph.owner import owner_label
from jobgraph.runners.attach import AttachedOutput, AttachError, attach
from jobgraph.runners.base import JobSpec, Outcome
from jobgraph.runners.container_exit import outcome_of
from jobgraph.runners.container_log import EngineLog, copy_logs
from jobgraph.runners.container_options import RETURN_FILE, create_options, out_folder
from jobgraph.runners.engine_api import (
    connect,
    create_container,
    explain,
    inspect,
    kill,
    remove,
    remove_orphans,
    remove_owned_by,
    remove_run_containers,
    state_after_exit,
    timed_out,
)
from jobgraph.runners.oom_watch import OomWatch, known_cgroup, memory_cgroup
from jobgraph.runners.output import LogWriter, collect_return_file, prepare_out_folder, return_value_of, tail
from jobgraph.runners.redaction import redactor_for, shown_env
from jobgraph.runners.service import EngineService, find_or_start
from jobgraph.states import AttemptStatus

if TYPE_CHECKING:
    from pydantic import BaseModel

    from jobgraph.config.model import Pipeline

WAIT_POLL_SECS = 5.0
"""How long one wait call blocks; between calls the running container's log file is refreshed."""

ENGINE_RETRIES = 5
"""Failed calls in a row (a second apart) before a running attempt is recorded as ERROR: engine gone."""

KILLED_STREAM_GRACE_SECS = 5.0
"""How long a killed container's attached stream may take to end before its log is read from the engine."""

T = TypeVar("T")


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
        options = create_options(spec, self._cwd, self._owner)
        image = self._images.get(spec.image, spec.image)
        out = out_folder(spec)
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
        return outcome_of(handle.spec, code, state, await self._oom_watch(handle))

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
        return outcome_of(handle.spec, int(state.get("ExitCode", -1)), state, await self._oom_watch(handle))

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
        await self._call(copy_logs, handle.container, handle.log, final)
        out = out_folder(handle.spec)
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
        options = create_options(spec, self._cwd, self._owner)
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
