"""The few Kubernetes API calls the Kubernetes runner makes, through lightkube's async client: plain dicts in and out,
and every failure one `ApiFailure` (a RunnerError) with the HTTP status, if one came back.

Why lightkube (the optional extra `jobgraph[kubernetes]`): typed, async, 0.13 s to import and ~4 MB
installed, where the official client is ~120 MB. It is imported here only; `MISSING_EXTRA` says it is
not installed, and the registry's constructor then says what to install.

The kubeconfig comes from the settings' path, else $KUBECONFIG (its first file), else ~/.kube/config,
else the in-cluster service account; the context from the settings, else the current one.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, cast

from jobgraph.errors import RunnerError
from jobgraph.runners.kubernetes_manifest import CONTAINER, KubernetesSettings

try:
    import httpx2
    from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig
    from lightkube.operators import in_
    from lightkube.resources.batch_v1 import Job
    from lightkube.resources.core_v1 import Pod
    from lightkube.types import CascadeType
except ImportError:  # the optional extra is not installed
    MISSING_EXTRA = True
else:
    MISSING_EXTRA = False

Kind = Literal["jobs", "pods"]

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
"""The labels the Job controller gives a Job's pods (the second one on every version)."""

MANAGED_BY = {"app.kubernetes.io/managed-by": "jobgraph"}


class ApiFailure(RunnerError):
    """An API call that failed: `code` is its HTTP status (404, 409, 410...), None if the API did not answer."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


class KubeApi:
    """A client for one namespace of the cluster the kubeconfig names, opened once."""

    def __init__(self, settings: KubernetesSettings) -> None:
        self._settings = settings
        self.namespace = settings.namespace
        self._client: AsyncClient | None = None
        self.server = "?"

    async def open(self) -> None:
        """Load the kubeconfig, then check that the API answers and lets us list Jobs in the namespace."""
        if self._client is not None:
            return
        try:
            single = _kubeconfig(self._settings).get(context_name=self._settings.context)
        except ConfigError as exc:
            raise RunnerError(f"runners.kubernetes: {exc}") from None
        self.server = single.cluster.server if single is not None else "?"
        self._client = AsyncClient(single, namespace=self.namespace, field_manager="jobgraph")
        try:
            async for _ in self._client.list(Job, namespace=self.namespace, chunk_size=1):
                break
        except httpx2.HTTPError as exc:
            await self.close()
            if _code(exc) is None:
                raise RunnerError(f"the Kubernetes API at {self.server} does not answer: {exc}") from None
            raise RunnerError(f"the Kubernetes API at {self.server} refused to list Jobs in namespace "
                              f"{self.namespace}: {_reason(exc)}") from None

    @property
    def opened(self) -> bool:
        return self._client is not None

    def _api(self) -> AsyncClient:
        if self._client is None:
            raise RunnerError("the Kubernetes runner was not opened")
        return self._client

    async def create_job(self, manifest: dict[str, Any]) -> None:
        """Create the Job; an ApiFailure with code 409 if one of that name is there."""
        try:
            await self._api().create(cast(Job, Job.from_dict(manifest)))
        except httpx2.HTTPError as exc:
            raise _failure(exc, f"Kubernetes did not create Job {manifest['metadata']['name']}") from None

    async def job(self, name: str) -> dict[str, Any] | None:
        """The Job as the API has it now, None if it has none by that name."""
        try:
            return (await self._api().get(Job, name, namespace=self.namespace)).to_dict()
        except httpx2.HTTPError as exc:
            if _code(exc) == 404:
                return None
            raise _failure(exc, f"Kubernetes did not say whether Job {name} is there") from None

    async def delete_job(self, name: str) -> None:
        """Delete the Job and, in the background, its pods (without propagationPolicy the API orphans them);
        a Job already gone is no error."""
        try:
            await self._api().delete(Job, name, namespace=self.namespace, cascade=CascadeType.BACKGROUND)
        except httpx2.HTTPError as exc:
            if _code(exc) != 404:
                raise _failure(exc, f"Kubernetes did not delete Job {name}") from None

    async def pods_of(self, name: str) -> list[dict[str, Any]]:
        """The Job's pods, by the label the Job controller gives them (checked here too)."""
        try:
            pods = [pod.to_dict() async for pod in self._api().list(Pod, namespace=self.namespace,
                                                                     labels={"job-name": name})]
        except httpx2.HTTPError as exc:
            raise _failure(exc, f"Kubernetes did not list the pods of Job {name}") from None
        return [pod for pod in pods if job_of(pod) == name]

    async def log_tail(self, pod: str, max_bytes: int) -> bytes:
        """At most the last `max_bytes` of the `main` container's log, kept bounded while it is read (never
        followed); b"" if the API has none (the pod or its node is gone)."""
        lines: deque[bytes] = deque()
        size = 0
        try:
            async for line in self._api().log(pod, namespace=self.namespace, container=CONTAINER,
                                              tail_lines=max(1, max_bytes // 16)):
                lines.append(line.encode())
                size += len(lines[-1])
                while size > max_bytes and lines:
                    size -= len(lines.popleft())
        except httpx2.HTTPError:
            return b""
        return b"".join(lines)[-max_bytes:]

    async def list(self, kind: Kind, runs: frozenset[str]) -> tuple[list[dict[str, Any]], str]:
        """The runs' Jobs or pods, and the resourceVersion a watch goes on from."""
        client, labels = self._api(), _selector(runs)
        try:
            if kind == "jobs":
                jobs = client.list(Job, namespace=self.namespace, labels=labels)
                return [job.to_dict() async for job in jobs], jobs.resourceVersion
            pods = client.list(Pod, namespace=self.namespace, labels=labels)
            return [pod.to_dict() async for pod in pods], pods.resourceVersion
        except httpx2.HTTPError as exc:
            raise _failure(exc, f"Kubernetes did not list the {kind}") from None

    async def watch(self, kind: Kind, runs: frozenset[str], version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The runs' Jobs' or pods' changes after `version`; an ApiFailure (code 410: the version is too old)
        or a broken stream ends it."""
        client, labels = self._api(), _selector(runs)
        try:
            if kind == "jobs":
                async for event, job in client.watch(Job, namespace=self.namespace, labels=labels,
                                                     resource_version=version):
                    yield event, job.to_dict()
            else:
                async for event, pod in client.watch(Pod, namespace=self.namespace, labels=labels,
                                                     resource_version=version):
                    yield event, pod.to_dict()
        except (httpx2.HTTPError, httpx2.StreamError) as exc:
            code = _code(exc) if isinstance(exc, httpx2.HTTPError) else None
            raise ApiFailure(f"the watch of {kind} ended: {_reason(exc)}", code) from None

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def job_of(pod: dict[str, Any]) -> str | None:
    """The name of the Job a pod belongs to, by the Job controller's labels."""
    labels = pod.get("metadata", {}).get("labels") or {}
    return next((labels[key] for key in JOB_NAME_LABELS if key in labels), None)


def _selector(runs: frozenset[str]) -> dict[str, Any]:
    return {**MANAGED_BY, "jobgraph.io/run": in_(sorted(runs))}


def _failure(exc: httpx2.HTTPError, what: str) -> ApiFailure:
    code = _code(exc)
    return ApiFailure(f"{what}: {_reason(exc)}" if code is not None else f"{what}: the API did not answer ({exc})",
                      code)


def _code(exc: httpx2.HTTPError) -> int | None:
    """The HTTP status of an API error (a Status object, or a bare error response), None if none came back."""
    if isinstance(exc, ApiError) and exc.status is not None:
        return exc.status.code
    return exc.response.status_code if isinstance(exc, httpx2.HTTPStatusError) else None


def _reason(exc: Exception) -> str:
    """The API's own words for an error (its Status message), else the error itself."""
    message = exc.status.message if isinstance(exc, ApiError) and exc.status is not None else None
    return message or (str(exc).splitlines() or [repr(exc)])[0]


def _kubeconfig(settings: KubernetesSettings) -> KubeConfig:
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
