"""A Kubernetes API for the tests: kmock's emulator on a real HTTP port, and a test that plays the Job controller.

No kube-apiserver can be installed on these machines, so the runner's state machine is tested against
kmock's KubernetesEmulator (an in-memory object store served over HTTP: create, get, list, watch,
patch, delete), through the real lightkube client and a real kubeconfig. The emulator has no
controllers: `Controller` does what the Job controller and the kubelet would (create the Job's pod,
set its container's state, set the Job's conditions, delete the pods of a deleted Job), each through
the API, so the runner sees only what a cluster would show it. What the emulator does not do, and so
is not tested here: label selectors (it serves every object of the kind; the runner filters again),
resourceVersions (its lists have none), server-side timeouts, admission and schema checks.

kmock's own pytest fixture needs pytest-asyncio, which this project does not use (its plugin is
disabled in pyproject's addopts): the server runs here in a thread with its own event loop, so a
`jobgraph` process or the test's own `asyncio.run` can talk to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx2
import kmock
import pytest
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

NAMESPACE = "jg-test"
JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
T = TypeVar("T")


class KubeServer:
    """kmock's KubernetesEmulator served on 127.0.0.1 from a thread, and a kubeconfig that points at it."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.emulator: kmock.KubernetesEmulator | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("kmock did not start")
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "test", "context": {"cluster": "kmock", "user": "tester", "namespace": NAMESPACE}}],
        }))

    async def _serve(self) -> None:
        emulator = kmock.KubernetesEmulator()
        async with emulator, kmock.Server(emulator) as server:
            # declared, so that an empty list is a list, not a 404
            emulator.resources["batch/v1/jobs"] = kmock.ResourceInfo(namespaced=True)
            emulator.resources["v1/pods"] = kmock.ResourceInfo(namespaced=True)
            self.emulator, self.url, self._stop = emulator, str(server.url).rstrip("/"), asyncio.Event()
            self._ready.set()
            await self._stop.wait()

    def call(self, action: Callable[[kmock.KubernetesEmulator], T]) -> T:
        """Run `action` on the emulator in its own loop (it is not thread-safe), and return its result."""
        assert self.emulator is not None
        emulator = self.emulator
        done: Future[T] = Future()

        def run() -> None:
            try:
                done.set_result(action(emulator))
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(10)

    def requests(self, *criteria: Any) -> list[kmock.Request]:
        """The requests the emulator saw, matching the criteria (e.g. 'delete', JOBS)."""
        return self.call(lambda emulator: list(emulator[criteria] if criteria else emulator))

    def serve_log(self, pod: str, text: str) -> None:
        """The pod's log, as the kubelet would serve it (plain text, which lightkube reads line by line)."""
        self.call(lambda e: e["get", PODS, kmock.subresource("log"), kmock.name(pod)]
                  << kmock.headers({"Content-Type": "text/plain"}) << text.encode())

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeServer]:
    """A Kubernetes API emulator; KUBECONFIG points at it for this test (and the processes it starts)."""
    server = KubeServer(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig))
    try:
        yield server
    finally:
        server.close()


class Controller:
    """Plays the Job controller and the kubelet, through the API, for the Jobs the runner creates."""

    def __init__(self, server: KubeServer) -> None:
        self.client = AsyncClient(KubeConfig.from_file(server.kubeconfig), namespace=NAMESPACE)

    async def job(self, name: str | None = None, timeout: float = 20) -> dict[str, Any]:
        """The Job called `name` (the first one there is if None), once it exists."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            jobs = [job.to_dict() async for job in self.client.list(Job, namespace=NAMESPACE)]
            found = [job for job in jobs if name is None or job["metadata"]["name"] == name]
            if found:
                return found[0]
            if loop.time() > deadline:
                raise AssertionError(f"no Job {name or ''} was created within {timeout}s")
            await asyncio.sleep(0.02)

    async def start_pod(self, job: dict[str, Any], suffix: str = "x1") -> str:
        """Create the Job's pod from its template, with the labels the Job controller adds; its name."""
        name = f"{job['metadata']['name']}-{suffix}"
        template = job["spec"]["template"]
        labels = {**template["metadata"].get("labels", {}), "batch.kubernetes.io/job-name": job["metadata"]["name"],
                  "job-name": job["metadata"]["name"]}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
               "spec": template["spec"], "status": {"phase": "Pending"}}
        await self.client.create(cast(Pod, Pod.from_dict(pod)))
        return name

    async def pod_status(self, pod: str, status: dict[str, Any]) -> None:
        await self.client.patch(Pod.Status, pod, {"status": status}, namespace=NAMESPACE,
                                patch_type=PatchType.MERGE)

    async def container(self, pod: str, state: dict[str, Any], phase: str = "Running", **extra: Any) -> None:
        """Set the `main` container's state (running, waiting, terminated) and the pod's phase."""
        await self.pod_status(pod, {"phase": phase, "containerStatuses": [
            {"name": "main", "state": state, "ready": False, "restartCount": 0, "image": "x", "imageID": ""}],
            **extra})

    async def end(self, pod: str, exit_code: int, reason: str | None = None, message: str | None = None) -> None:
        """The container ended: exit code, reason (OOMKilled...) and termination message."""
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0
                                                                                  else "Error"),
                                      "finishedAt": "2026-01-02T03:04:05Z"}
        if message is not None:
            terminated["message"] = message
        await self.container(pod, {"terminated": terminated}, "Succeeded" if exit_code == 0 else "Failed")

    async def finish(self, job: str, kind: str = "Complete", reason: str | None = None, message: str = "") -> None:
        """Set the Job's end condition, as the Job controller does once its pod ended (or its deadline passed)."""
        entry = {"type": kind, "status": "True", "reason": reason, "message": message,
                 "lastTransitionTime": "2026-01-02T03:04:06Z"}
        await self.client.patch(Job.Status, job, {"status": {"conditions": [entry]}}, namespace=NAMESPACE,
                                patch_type=PatchType.MERGE)

    async def pods_of(self, job: str) -> list[dict[str, Any]]:
        pods = [pod.to_dict() async for pod in self.client.list(Pod, namespace=NAMESPACE)]
        return [pod for pod in pods if pod["metadata"]["labels"].get("job-name") == job]

    async def collect_garbage(self, job: str) -> None:
        """Delete a deleted Job's pods, as the garbage collector does for propagationPolicy Background."""
        for pod in await self.pods_of(job):
            with contextlib.suppress(httpx2.HTTPStatusError):  # already gone
                await self.client.delete(Pod, pod["metadata"]["name"], namespace=NAMESPACE)

    async def close(self) -> None:
        await self.client.close()


async def watch_lost_then_gone(lost: threading.Event) -> AsyncIterator[Any]:
    """A watch stream that delivers nothing until `lost` is set, then says its version is too old (HTTP 410 as
    an ERROR event, as the API server does): what it swallowed in between must come from a fresh list."""
    yield b""  # the stream's headers go at once: the watch is connected
    while not lost.is_set():
        await asyncio.sleep(0.01)
    yield {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410,
                                       "reason": "Expired", "message": "too old resource version: 1 (2)"}}


Decide = Callable[[dict[str, Any]], tuple[int, str | None, str]]
"""For a Job the runner created: (exit code, termination message, log) its pod ends with."""


class AutoController:
    """Plays the Job controller in a thread of its own for a whole `jobgraph` process: each new Job gets a pod
    that ends as `decide` says, then the Job's condition (Complete, or Failed with BackoffLimitExceeded)."""

    def __init__(self, server: KubeServer, decide: Decide) -> None:
        self._server = server
        self._decide = decide
        self._stop = threading.Event()
        self.seen: list[str] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._play(),), daemon=True)

    def __enter__(self) -> AutoController:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _play(self) -> None:
        controller = Controller(self._server)
        try:
            while not self._stop.is_set():
                for job in [job.to_dict() async for job in controller.client.list(Job, namespace=NAMESPACE)]:
                    name = job["metadata"]["name"]
                    if name not in self.seen:
                        self.seen.append(name)
                        code, message, log = self._decide(job)
                        pod = await controller.start_pod(job)
                        self._server.serve_log(pod, log)
                        await controller.end(pod, code, message=message)
                        if code == 0:
                            await controller.finish(name)
                        else:
                            await controller.finish(name, "Failed", "BackoffLimitExceeded")
                await asyncio.sleep(0.02)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            await controller.close()
