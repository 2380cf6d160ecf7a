"""Run each attempt as one Kubernetes `batch/v1` Job; one list-then-watch follows them all.

The API calls (lightkube's async client, the optional extra `jobgraph[kubernetes]`) are in
kubernetes_api.py, the manifest in kubernetes_manifest.py, how a Job and its pod become an Outcome in
kubernetes_states.py; this module is the state machine between them.

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
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobgraph.errors import RunnerError
from jobgraph.owner import owner_label
from jobgraph.runners.base import JobSpec, Outcome
from jobgraph.runners.kubernetes_api import MISSING_EXTRA, ApiFailure, Kind, KubeApi, job_of
from jobgraph.runners.kubernetes_manifest import (
    KubernetesSettings,
    describe,
    job_manifest,
    job_name,
    label_value,
)
from jobgraph.runners.kubernetes_states import is_finished, latest_pod, outcome_of, stuck_reason, terminated
from jobgraph.runners.output import LogWriter, tail
from jobgraph.runners.redaction import redactor_for
from jobgraph.runners.watched import Watched
from jobgraph.states import AttemptStatus

if TYPE_CHECKING:
    from pydantic import BaseModel

    from jobgraph.config.model import Pipeline

API_TIMEOUT = 120.0
"""How long the API may fail to answer the watch before every attempt in flight is an ERROR."""

CANCEL_TIMEOUT = 90.0
"""How long a deleted Job's pods may take to go: their grace period (30 s by default), and more."""


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
        self._api = KubeApi(settings)
        self._watched: Watched[KubernetesHandle] = Watched(lambda handle: handle.name)
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
        await self._api.open()

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
            text = (await self._api.log_tail(pod, tail_bytes)).decode(errors="replace") if pod else ""
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
        job = await self._api.job(handle.name)
        if handle.finishing:  # the watch is reading how it ended: let it, before the Job and its log go
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(handle.outcome), CANCEL_TIMEOUT)
        elif job is not None and is_finished(job):
            handle.finishing = True
            await self._finish(handle, job)
        await self._api.delete_job(handle.name)
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + CANCEL_TIMEOUT, 0.05
        while await self._api.job(handle.name) is not None or await self._api.pods_of(handle.name):
            if loop.time() > deadline:
                raise RunnerError(f"Job {handle.name} or its pods are still there {CANCEL_TIMEOUT:g}s after "
                                  "it was deleted")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
        self._watched.resolve(handle, Outcome(AttemptStatus.CANCELLED, None, "cancelled by jobgraph (Job deleted)"))

    async def aclose(self) -> None:
        """Stop watching and close the client. Jobs still in the cluster go on: the next jobgraph adopts them."""
        for task in [self._follower, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._follower = None
        self._watched.abandon("the Kubernetes runner was closed; the Job goes on")
        await self._api.close()

    async def _create(self, manifest: dict[str, Any], spec: JobSpec) -> None:
        """Create the Job; one of the same name (an earlier try whose answer was lost) is taken if it is this
        attempt's, by its labels."""
        name = manifest["metadata"]["name"]
        try:
            await self._api.create_job(manifest)
        except ApiFailure as exc:
            if exc.code != 409:
                raise
            existing = await self._api.job(name) or {}
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
                except ApiFailure as exc:
                    self.relists += 1
                    if exc.code == 410:
                        continue  # the version is too old: a fresh list at once
                    failing_since = loop.time() if failing_since is None else failing_since
                    if loop.time() - failing_since >= API_TIMEOUT:
                        why = f"the Kubernetes API did not answer for {API_TIMEOUT:g}s: {exc}"
                        for handle in list(self._watched.values()):
                            self._watched.resolve(handle, Outcome(AttemptStatus.ERROR, None,
                                                                  f"{why}; Job {handle.name} may still run"))
                        return
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
        except Exception as exc:  # a bug must reach the waiters, not hang them
            self._watched.fail_all(f"the Kubernetes watch failed: {exc!r}")

    async def _list_then_watch(self) -> None:
        """One list of the runs' Jobs and pods, then watches from its version until the runs change."""
        self._changed = asyncio.Event()
        runs = self._runs()
        known = set(self._watched)  # each of these was created before the list below: unlisted means gone
        pods, pods_version = await self._api.list("pods", runs)
        for pod in pods:
            self._on_pod("ADDED", pod)
        jobs, jobs_version = await self._api.list("jobs", runs)
        for job in jobs:
            self._on_job("ADDED", job)
        listed = {job.get("metadata", {}).get("name") for job in jobs}
        for handle in [h for name, h in self._watched.items() if name in known and name not in listed]:
            self._gone_job(handle)
        streams = [
            asyncio.ensure_future(self._stream("jobs", runs, jobs_version)),
            asyncio.ensure_future(self._stream("pods", runs, pods_version)),
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

    async def _stream(self, kind: Kind, runs: frozenset[str], version: str) -> None:
        async for event, item in self._api.watch(kind, runs, version):
            (self._on_job if kind == "jobs" else self._on_pod)(event, item)
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
        handle = self._watched.get(job_of(pod) or "")
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
        self._watched.resolve(handle, Outcome(AttemptStatus.ERROR, None, f"Job {handle.name} is gone from namespace "
                                              f"{self._settings.namespace} (deleted before it ended, or never "
                                              "created)"))

    async def _finish(self, handle: KubernetesHandle, job: dict[str, Any]) -> None:
        """Read the ended Job's pod (fresh: its last event may still be on the way) and its log, then resolve."""
        try:
            pod = latest_pod(await self._api.pods_of(handle.name)) or handle.pod
        except RunnerError:
            pod = handle.pod
        outcome = outcome_of(job, pod, handle.limits)
        if pod is not None:
            await self._save_log(handle, pod["metadata"]["name"])
            message = terminated(pod).get("message")
            if outcome.status == AttemptStatus.DONE and isinstance(message, str) and message:
                handle.return_value = redactor_for(handle.spec.secret_values).text(message)
        self._watched.resolve(handle, outcome)

    async def _give_up(self, handle: KubernetesHandle) -> None:
        """End an attempt whose pod could not start within the pending limit, and delete its Job."""
        with contextlib.suppress(RunnerError):
            await self._api.delete_job(handle.name)
        self._watched.resolve(handle, Outcome(AttemptStatus.ERROR, None, f"the pod could not start for "
                                              f"{self._settings.pending_limit_secs:g}s: {handle.stuck}; deleted Job "
                                              f"{handle.name}"))

    async def _save_log(self, handle: KubernetesHandle, pod: str) -> None:
        """The tail of the pod's log, once, into the attempt's log (redacted, capped); a log the API no longer
        has (the node is gone) leaves it empty."""
        data = await self._api.log_tail(pod, self._settings.log_tail_bytes)
        writer = LogWriter(handle.spec.log_path, redactor_for(handle.spec.secret_values), handle.spec.log_limit)
        try:
            writer.write(data)
        finally:
            writer.close()

    def _spawn(self, handle: KubernetesHandle, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._settle(handle, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, handle: KubernetesHandle, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:  # the attempt ends whatever failed while reading how it ended
            self._watched.resolve(handle, Outcome(AttemptStatus.ERROR, None, f"reading how Job {handle.name} ended "
                                                  f"failed: {exc!r}"))


def _limits(spec: JobSpec) -> str:
    parts = [f"memory limit {spec.memory_bytes >> 20} MiB"] if spec.memory_bytes else []
    parts += [f"deadline {spec.timeout:g}s"] if spec.timeout else []
    return ", ".join(parts)


def build(_name: str, pipeline: Pipeline, settings: BaseModel | None, _folder: Path,
          _cwd: Path | None) -> KubernetesRunner:
    """The registry's constructor, with the pipeline's `runners.kubernetes` settings; the pipeline's
    container_images fill the images the settings do not map."""
    if MISSING_EXTRA:
        raise RunnerError("the kubernetes runner needs lightkube: pip install 'jobgraph[kubernetes]'")
    chosen = settings if isinstance(settings, KubernetesSettings) else KubernetesSettings()
    images = {**pipeline.container_images, **chosen.images}
    return KubernetesRunner(chosen.model_copy(update={"images": images}))
