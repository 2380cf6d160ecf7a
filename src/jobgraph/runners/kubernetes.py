"""Run each attempt as one Kubernetes `batch/v1` Job, through lightkube's async client; one watch follows them all.

Why lightkube (the optional extra `jobgraph[kubernetes]`): typed, async, 0.13 s to import and ~4 MB
installed, where the official client is ~120 MB. It is imported here only.

- One attempt = one Job (kubernetes_manifest.py writes it: backoffLimit 0, the deadline from the
  timeout, labels for the run, job, attempt and owner, secrets by reference). `handle_ref` is the Job's
  name, which the store records; `adopt` finds the Job again by that name after a restart.
- One list-then-watch per runner, of the Jobs and pods of the runs it has attempts of (selected by
  their `jobgraph.io/run` label: an adopted Job keeps its run, not its first owner): the list gives the
  state and a resourceVersion, the watches go on from it; an HTTP 410 (that version is too old) or a
  broken stream starts again with a fresh list, so no end is missed. The API not answering for
  `API_TIMEOUT` seconds is an ERROR for every attempt in flight.
- The end comes from the Job's conditions; the exit code, OOMKilled, an eviction and the return value
  (the termination message) from its pod (kubernetes_states.py). Once the pod ended its log's tail is
  read once (never followed: a follow stream can hang forever) into the attempt's log, redacted and
  capped. A pod that cannot start (image pull, unschedulable) for `pending_limit_secs` is an ERROR with
  Kubernetes' reason, and its Job is deleted.
- `cancel` deletes the Job with propagationPolicy Background (without it the API orphans the pods),
  then returns once the Job and its pods are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from jobgraph.errors import RunnerError
from jobgraph.owner import owner_label
from jobgraph.runners.base import JobSpec, Outcome
from jobgraph.runners.kubernetes_manifest import (
    CONTAINER,
    KubernetesSettings,
    describe,
    job_manifest,
    job_name,
    label_value,
)
from jobgraph.runners.kubernetes_states import is_finished, latest_pod, outcome_of, stuck_reason, terminated
from jobgraph.runners.output import LogWriter, redactor_for, tail
from jobgraph.states import AttemptStatus

try:
    import httpx2
    from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig
    from lightkube.operators import in_
    from lightkube.resources.batch_v1 import Job
    from lightkube.resources.core_v1 import Pod
    from lightkube.types import CascadeType
except ImportError:  # the optional extra is not installed: build() says how to install it
    MISSING_EXTRA = True
else:
    MISSING_EXTRA = False

if TYPE_CHECKING:
    from pydantic import BaseModel

    from jobgraph.config.model import Pipeline

API_TIMEOUT = 120.0
"""How long the API may fail to answer the watch before every attempt in flight is an ERROR."""

CANCEL_TIMEOUT = 90.0
"""How long a deleted Job's pods may take to go: their grace period (30 s by default), and more."""

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
"""The labels the Job controller gives a Job's pods (the second one on every version)."""

MANAGED_BY = {"app.kubernetes.io/managed-by": "jobgraph"}


@dataclass(eq=False)
class KubernetesHandle:
    """A submitted attempt: its Job's name, and the outcome the watch will set."""

    name: str
    spec: JobSpec
    outcome: asyncio.Future[Outcome]
    cancelled: bool = False
    finishing: bool = False
    pod: dict[str, Any] | None = None
    stuck_since: float | None = None
    stuck: str | None = None
    return_value: str | None = None
    limits: str = field(default="")


class KubernetesRunner:
    """Runner for Kubernetes Jobs."""

    name = "kubernetes"

    def __init__(self, settings: KubernetesSettings) -> None:
        self._settings = settings
        self._owner = owner_label()
        self._client: AsyncClient | None = None
        self._watched: dict[str, KubernetesHandle] = {}
        self._follower: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.relists = 0
        """How many times the watch started again from a fresh list (an HTTP 410, a broken stream)."""

    @property
    def settings(self) -> KubernetesSettings:
        """The `runners.kubernetes` settings (on_orchestrator_loss is read by recovery)."""
        return self._settings

    async def open(self) -> None:
        """Load the kubeconfig and check that the API answers and lets us list Jobs in the namespace."""
        if self._client is not None:
            return
        config = _kubeconfig(self._settings)
        try:
            single = config.get(context_name=self._settings.context)
        except ConfigError as exc:
            raise RunnerError(f"runners.kubernetes: {exc}") from None
        self._client = AsyncClient(single, namespace=self._settings.namespace, field_manager="jobgraph")
        server = single.cluster.server if single is not None else "?"
        try:
            async for _ in self._client.list(Job, namespace=self._settings.namespace, chunk_size=1):
                break
        except httpx2.HTTPError as exc:
            await self.aclose()
            if _code(exc) is None:
                raise RunnerError(f"the Kubernetes API at {server} does not answer: {exc}") from None
            raise RunnerError(f"the Kubernetes API at {server} refused to list Jobs in namespace "
                              f"{self._settings.namespace}: {_reason(exc)}") from None

    def describe(self, spec: JobSpec) -> dict[str, object]:
        """The Job `start` would create, secrets shown as references."""
        return describe(spec, self._settings, self._owner)

    def handle_ref(self, handle: KubernetesHandle) -> str:
        """The Job's name: what the store records, and what `adopt` takes back."""
        return handle.name

    async def start(self, spec: JobSpec) -> KubernetesHandle:
        """Create the attempt's Job; a refusal is a RunnerError with the API's reason. A cancel that arrives
        while the Job is created does not lose it: the Job is deleted, then the cancel goes on."""
        manifest = job_manifest(spec, self._settings, self._owner)
        name = str(manifest["metadata"]["name"])
        await self.open()
        creating = asyncio.ensure_future(self._create(manifest, spec))
        try:
            await asyncio.shield(creating)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await creating
                await self.cancel(self._watch(name, spec))
            raise
        return self._watch(name, spec)

    async def adopt(self, reference: str, spec: JobSpec) -> KubernetesHandle:
        """Go on waiting for the Job an earlier jobgraph created for this attempt, whatever it did since;
        a Job the API no longer has ends the attempt as an ERROR at the next list."""
        expected = job_name(spec)
        if reference != expected:
            raise RunnerError(f"{reference!r} is not the Job of {spec.task} attempt {spec.attempt} ({expected})")
        await self.open()  # recovery adopts (and cancels) with a runner it did not open
        return self._watch(reference, spec)

    async def wait(self, handle: KubernetesHandle) -> Outcome:
        """Wait until the watch has seen the attempt end; cancelling this leaves the Job alone."""
        return await asyncio.shield(handle.outcome)

    async def logs(self, handle: KubernetesHandle, tail_bytes: int) -> str:
        """The end of the attempt's output: its log once it ended, else what the API has of the pod's log."""
        if handle.outcome.done():
            text = await asyncio.to_thread(tail, handle.spec.log_path, tail_bytes)
        else:
            pod = handle.pod["metadata"]["name"] if handle.pod else None
            text = (await self._log_tail(pod, tail_bytes)).decode(errors="replace") if pod else ""
        return redactor_for(handle.spec.secret_values).text(text)[-tail_bytes:]

    async def read_return_value(self, handle: KubernetesHandle, max_bytes: int) -> str | None:
        """The container's termination message (where the job wrote its return value), at most `max_bytes`."""
        value = handle.return_value
        return None if value is None else value[:max_bytes]

    async def cancel(self, handle: KubernetesHandle) -> None:
        """Delete the Job with propagationPolicy Background, then return once it and its pods are gone. A Job
        that had already ended keeps its real end (read before it goes), as recovery records it."""
        handle.cancelled = True
        await self.open()
        client = self._api()
        namespace = self._settings.namespace
        job = await self._job(handle.name)
        if job is not None and is_finished(job) and not handle.outcome.done():
            handle.finishing = True
            await self._finish(handle, job)
        try:
            await client.delete(Job, handle.name, namespace=namespace, cascade=CascadeType.BACKGROUND)
        except httpx2.HTTPError as exc:
            if _code(exc) != 404:
                raise RunnerError(f"Kubernetes did not delete Job {handle.name}: {_reason(exc)}") from None
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + CANCEL_TIMEOUT, 0.05
        while await self._job_exists(handle.name) or await self._pods_of(handle.name):
            if loop.time() > deadline:
                raise RunnerError(f"Job {handle.name} or its pods are still there {CANCEL_TIMEOUT:g}s after "
                                  "it was deleted")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
        self._resolve(handle, Outcome(AttemptStatus.CANCELLED, None, "cancelled by jobgraph (Job deleted)"))

    async def aclose(self) -> None:
        """Stop watching and close the client. Jobs still in the cluster go on: the next jobgraph adopts them."""
        for task in [self._follower, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._follower = None
        for handle in self._watched.values():
            if not handle.outcome.done():
                handle.outcome.set_exception(RunnerError("the Kubernetes runner was closed; the Job goes on"))
                handle.outcome.exception()  # retrieved: nobody may be waiting
        self._watched.clear()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _api(self) -> AsyncClient:
        if self._client is None:
            raise RunnerError("the Kubernetes runner was not opened")
        return self._client

    async def _create(self, manifest: dict[str, Any], spec: JobSpec) -> None:
        """Create the Job; one of the same name (an earlier try whose answer was lost) is taken if it is this
        attempt's, by its labels."""
        client = self._api()
        name = manifest["metadata"]["name"]
        try:
            await client.create(cast(Job, Job.from_dict(manifest)))
        except httpx2.HTTPError as exc:
            if _code(exc) != 409:
                raise RunnerError(f"Kubernetes did not create Job {name}: {_reason(exc)}") from None
            existing = (await client.get(Job, name, namespace=self._settings.namespace)).to_dict()
            labels = existing.get("metadata", {}).get("labels") or {}
            if labels.get("jobgraph.io/run") != label_value(spec.run_id) or \
                    labels.get("jobgraph.io/attempt") != str(spec.attempt):
                raise RunnerError(f"a Job named {name} already exists in namespace {self._settings.namespace} "
                                  "and is not this attempt's") from None

    def _watch(self, name: str, spec: JobSpec) -> KubernetesHandle:
        handle = self._watched.get(name)
        if handle is None:
            handle = KubernetesHandle(name, spec, asyncio.get_running_loop().create_future(), limits=_limits(spec))
            runs = self._runs()
            self._watched[name] = handle
            if self._changed is not None and self._runs() != runs:
                self._changed.set()  # the watch's selector must take the new run in
        if self._follower is None or self._follower.done():
            self._follower = asyncio.create_task(self._follow(), name="jobgraph-kubernetes-watch")
        return handle

    def _runs(self) -> frozenset[str]:
        return frozenset(label_value(handle.spec.run_id) for handle in self._watched.values())

    async def _follow(self) -> None:
        """List then watch until no attempt is left; start again from a fresh list on a 410 or a broken stream."""
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        pause = 0.1
        try:
            while self._watched:
                try:
                    await self._list_then_watch()
                    failing_since, pause = None, 0.1
                except (httpx2.HTTPError, httpx2.StreamError, OSError) as exc:
                    self.relists += 1
                    if _gone(exc):
                        continue  # the version is too old: a fresh list at once
                    failing_since = loop.time() if failing_since is None else failing_since
                    if loop.time() - failing_since >= API_TIMEOUT:
                        for handle in list(self._watched.values()):
                            self._resolve(handle, Outcome(AttemptStatus.ERROR, None, f"the Kubernetes API did not "
                                                          f"answer for {API_TIMEOUT:g}s: {exc}; Job {handle.name} "
                                                          "may still run"))
                        return
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
        except Exception as exc:  # a bug must reach the waiters, not hang them
            for handle in list(self._watched.values()):
                self._resolve(handle, Outcome(AttemptStatus.ERROR, None, f"the Kubernetes watch failed: {exc!r}"))

    async def _list_then_watch(self) -> None:
        """One list of the runs' Jobs and pods, then watches from its version until the runs change."""
        client = self._api()
        namespace = self._settings.namespace
        self._changed = asyncio.Event()
        selector: dict[str, Any] = {**MANAGED_BY, "jobgraph.io/run": in_(sorted(self._runs()))}
        known = set(self._watched)  # each of these was created before the list below: unlisted means gone
        pods = client.list(Pod, namespace=namespace, labels=selector)
        async for pod in pods:
            self._on_pod("ADDED", pod.to_dict())
        jobs = client.list(Job, namespace=namespace, labels=selector)
        listed: set[str] = set()
        async for job in jobs:
            listed.add(job.metadata.name if job.metadata and job.metadata.name else "")
            self._on_job("ADDED", job.to_dict())
        for handle in [h for name, h in self._watched.items() if name in known and name not in listed]:
            self._gone_job(handle)
        streams = [
            asyncio.ensure_future(self._stream_jobs(selector, jobs.resourceVersion)),
            asyncio.ensure_future(self._stream_pods(selector, pods.resourceVersion)),
            asyncio.ensure_future(self._tick()),
        ]
        try:
            done, _ = await asyncio.wait(streams, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for stream in streams:
                stream.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
        for finished in done:
            finished.result()  # a stream's error: the caller lists again

    async def _stream_jobs(self, selector: dict[str, Any], version: str) -> None:
        async for event, job in self._api().watch(Job, namespace=self._settings.namespace, labels=selector,
                                                  resource_version=version):
            self._on_job(event, job.to_dict())
            if not self._watched:
                return

    async def _stream_pods(self, selector: dict[str, Any], version: str) -> None:
        async for event, pod in self._api().watch(Pod, namespace=self._settings.namespace, labels=selector,
                                                  resource_version=version):
            self._on_pod(event, pod.to_dict())
            if not self._watched:
                return

    async def _tick(self) -> None:
        """Give up on pods stuck past the pending limit; return when the runs to watch changed (or none is left)."""
        assert self._changed is not None
        limit = self._settings.pending_limit_secs
        loop = asyncio.get_running_loop()
        while self._watched:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(1.0, limit / 4))
                return
            for handle in list(self._watched.values()):
                if handle.stuck_since is not None and loop.time() - handle.stuck_since >= limit \
                        and not handle.finishing:
                    handle.finishing = True
                    self._spawn(handle, self._give_up(handle))

    def _on_job(self, event: str, job: dict[str, Any]) -> None:
        handle = self._watched.get(str(job.get("metadata", {}).get("name")))
        if handle is None or handle.finishing:
            return
        if event == "DELETED":
            self._gone_job(handle)
        elif any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                 for c in (job.get("status") or {}).get("conditions") or []):
            handle.finishing = True
            self._spawn(handle, self._finish(handle, job))

    def _on_pod(self, event: str, pod: dict[str, Any]) -> None:
        labels = pod.get("metadata", {}).get("labels") or {}
        handle = next((self._watched[labels[key]] for key in JOB_NAME_LABELS if labels.get(key) in self._watched),
                      None)
        if handle is None or event == "DELETED":
            return
        if handle.pod is None or handle.pod["metadata"].get("name") == pod["metadata"].get("name") or \
                latest_pod([handle.pod, pod]) is pod:
            handle.pod = pod  # the newer state of the same pod, or a newer pod (one replaced after a disruption)
        reason = stuck_reason(handle.pod)
        if reason is None:
            handle.stuck_since = handle.stuck = None
        elif handle.stuck_since is None:
            handle.stuck_since, handle.stuck = asyncio.get_running_loop().time(), reason
        else:
            handle.stuck = reason

    def _gone_job(self, handle: KubernetesHandle) -> None:
        if handle.cancelled or handle.finishing:
            return  # cancel() resolves it once the pods are gone too
        self._resolve(handle, Outcome(AttemptStatus.ERROR, None, f"Job {handle.name} is gone from namespace "
                                      f"{self._settings.namespace} (deleted before it ended, or never created)"))

    async def _finish(self, handle: KubernetesHandle, job: dict[str, Any]) -> None:
        """Read the ended Job's pod (fresh: its last event may still be on the way) and its log, then resolve."""
        try:
            pod = latest_pod(await self._pods_of(handle.name)) or handle.pod
        except RunnerError:
            pod = handle.pod
        outcome = outcome_of(job, pod, handle.limits)
        if pod is not None:
            await self._save_log(handle, pod["metadata"]["name"])
            message = terminated(pod).get("message")
            if outcome.status == AttemptStatus.DONE and isinstance(message, str) and message:
                handle.return_value = redactor_for(handle.spec.secret_values).text(message)
        self._resolve(handle, outcome)

    async def _give_up(self, handle: KubernetesHandle) -> None:
        """End an attempt whose pod could not start within the pending limit, and delete its Job."""
        with contextlib.suppress(ApiError, httpx2.HTTPError):
            await self._api().delete(Job, handle.name, namespace=self._settings.namespace,
                                     cascade=CascadeType.BACKGROUND)
        self._resolve(handle, Outcome(AttemptStatus.ERROR, None, f"the pod could not start for "
                                      f"{self._settings.pending_limit_secs:g}s: {handle.stuck}; deleted Job "
                                      f"{handle.name}"))

    async def _save_log(self, handle: KubernetesHandle, pod: str) -> None:
        """The tail of the pod's log, once, into the attempt's log (redacted, capped); a log the API no longer
        has (the node is gone) leaves it empty."""
        data = await self._log_tail(pod, self._settings.log_tail_bytes)
        writer = LogWriter(handle.spec.log_path, redactor_for(handle.spec.secret_values), handle.spec.log_limit)
        try:
            writer.write(data)
        finally:
            writer.close()

    async def _log_tail(self, pod: str, max_bytes: int) -> bytes:
        """At most the last `max_bytes` of the `main` container's log, kept bounded while it is read."""
        lines: deque[bytes] = deque()
        size = 0
        with contextlib.suppress(ApiError, httpx2.HTTPError):
            async for line in self._api().log(pod, namespace=self._settings.namespace, container=CONTAINER,
                                              tail_lines=max(1, max_bytes // 16)):
                lines.append(line.encode())
                size += len(lines[-1])
                while size > max_bytes and lines:
                    size -= len(lines.popleft())
        return b"".join(lines)[-max_bytes:]

    async def _job_exists(self, name: str) -> bool:
        return await self._job(name) is not None

    async def _job(self, name: str) -> dict[str, Any] | None:
        """The Job as the API has it now, None if it has none by that name."""
        try:
            return (await self._api().get(Job, name, namespace=self._settings.namespace)).to_dict()
        except httpx2.HTTPError as exc:
            if _code(exc) == 404:
                return None
            raise RunnerError(f"Kubernetes did not say whether Job {name} is there: {_reason(exc)}") from None

    async def _pods_of(self, name: str) -> list[dict[str, Any]]:
        """The Job's pods, by the label the Job controller gives them (checked here too)."""
        try:
            pods = [pod.to_dict() async for pod in self._api().list(Pod, namespace=self._settings.namespace,
                                                                     labels={"job-name": name})]
        except (ApiError, httpx2.HTTPError) as exc:
            raise RunnerError(f"the Kubernetes API did not list the pods of Job {name}: {exc}") from None
        return [pod for pod in pods if any((pod.get("metadata", {}).get("labels") or {}).get(key) == name
                                           for key in JOB_NAME_LABELS)]

    def _spawn(self, handle: KubernetesHandle, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._settle(handle, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, handle: KubernetesHandle, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:  # the attempt ends whatever failed while reading how it ended
            self._resolve(handle, Outcome(AttemptStatus.ERROR, None, f"reading how Job {handle.name} ended "
                                          f"failed: {exc!r}"))

    def _resolve(self, handle: KubernetesHandle, outcome: Outcome) -> None:
        if self._watched.get(handle.name) is handle:
            del self._watched[handle.name]
        if not handle.outcome.done():
            handle.outcome.set_result(outcome)


def _gone(exc: BaseException) -> bool:
    """True for HTTP 410 Gone: the watch's resourceVersion is too old (as a status or an ERROR event)."""
    return isinstance(exc, httpx2.HTTPError) and _code(exc) == 410


def _code(exc: httpx2.HTTPError) -> int | None:
    """The HTTP status of an API error (a Status object, or a bare error response), None if none came back."""
    if isinstance(exc, ApiError) and exc.status is not None:
        return exc.status.code
    return exc.response.status_code if isinstance(exc, httpx2.HTTPStatusError) else None


def _reason(exc: httpx2.HTTPError) -> str:
    """The API's own words for an error (its Status message), else the HTTP error."""
    message = exc.status.message if isinstance(exc, ApiError) and exc.status is not None else None
    return message or str(exc).splitlines()[0]


def _limits(spec: JobSpec) -> str:
    parts = [f"memory limit {spec.memory_bytes >> 20} MiB"] if spec.memory_bytes else []
    parts += [f"deadline {spec.timeout:g}s"] if spec.timeout else []
    return ", ".join(parts)


def _kubeconfig(settings: KubernetesSettings) -> KubeConfig:
    """The kubeconfig: the settings' path, else $KUBECONFIG (its first file), else ~/.kube/config, else the
    in-cluster service account."""
    paths = [settings.kubeconfig] if settings.kubeconfig else \
        [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p] or [str(Path("~/.kube/config"))]
    path = Path(paths[0]).expanduser()
    try:
        if settings.kubeconfig or path.is_file():
            return KubeConfig.from_file(path)
        return KubeConfig.from_service_account()
    except (ConfigError, OSError, ValueError, KeyError) as exc:
        where = path if settings.kubeconfig or path.is_file() else "the in-cluster service account"
        raise RunnerError(f"cannot load the Kubernetes configuration from {where}: {exc}; set KUBECONFIG or "
                          "runners.kubernetes.kubeconfig") from None


def build(_name: str, pipeline: Pipeline, settings: BaseModel | None, _folder: Path,
          _cwd: Path | None) -> KubernetesRunner:
    """The registry's constructor, with the pipeline's `runners.kubernetes` settings; the pipeline's
    container_images fill the images the settings do not map."""
    if MISSING_EXTRA:
        raise RunnerError("the kubernetes runner needs lightkube: pip install 'jobgraph[kubernetes]'")
    chosen = settings if isinstance(settings, KubernetesSettings) else KubernetesSettings()
    images = {**pipeline.container_images, **chosen.images}
    return KubernetesRunner(chosen.model_copy(update={"images": images}))
