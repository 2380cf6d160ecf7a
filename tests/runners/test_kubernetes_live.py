"""The Kubernetes runner on a real cluster: runs only when KUBECONFIG points at one whose API answers.

No cluster can be had on the machines this project is built on, so here these tests are skipped, with
the reason printed (`-ra`): the only skip of the suite. On a cluster (kind, minikube, k3d, a real one):

    KUBECONFIG=~/.kube/config JOBGRAPH_K8S_NAMESPACE=default pytest tests/runners/test_kubernetes_live.py

The account needs create/get/list/watch/delete on jobs and get/list/watch on pods and pods/log in the
namespace, and the nodes must be able to pull busybox:1.36.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Pod

from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec
from jobgraph.runners.kubernetes import KubernetesRunner
from jobgraph.runners.kubernetes_manifest import KubernetesSettings
from jobgraph.states import AttemptStatus

T = TypeVar("T")
IMAGE = "busybox:1.36"


@pytest.fixture
def cluster() -> KubernetesSettings:
    """The settings for the cluster KUBECONFIG points at; the test is skipped, saying why, if there is none."""
    path = os.environ.get("KUBECONFIG")
    if not path:
        pytest.skip("KUBECONFIG is not set: no Kubernetes cluster to run the live tests on (none can be had on "
                    "this project's build machines; the runner is tested against kmock in test_kubernetes.py)")
    if not Path(path.split(os.pathsep)[0]).expanduser().is_file():
        pytest.skip(f"KUBECONFIG={path} is not a file: no Kubernetes cluster to run the live tests on")
    settings = KubernetesSettings(namespace=os.environ.get("JOBGRAPH_K8S_NAMESPACE", "default"),
                                  pending_limit_secs=120)
    try:
        asyncio.run(_open_and_close(settings))
    except RunnerError as exc:
        pytest.skip(f"KUBECONFIG={path} names no cluster that answers: {exc}")
    return settings


async def _open_and_close(settings: KubernetesSettings) -> None:
    runner = KubernetesRunner(settings)
    try:
        await runner.open()
    finally:
        await runner.aclose()


def spec(tmp_path: Path, task: str, script: str, **fields: Any) -> JobSpec:
    env = {"JOBGRAPH_TASK": task, "JOBGRAPH_RETURN_VALUE_FILE": "/dev/termination-log"}
    return JobSpec(f"live{time.time_ns()}", "live", task, 1, IMAGE, ("sh", "-c", script), env,
                   tmp_path / f"{task}.log", **fields)


def run(settings: KubernetesSettings, body: Callable[[KubernetesRunner], Awaitable[T]]) -> T:
    async def main() -> T:
        runner = KubernetesRunner(settings)
        await runner.open()
        try:
            return await asyncio.wait_for(body(runner), 300)
        finally:
            await runner.aclose()

    return asyncio.run(main())


def test_a_job_runs_to_its_end_with_its_exit_code_log_and_return_value(cluster: KubernetesSettings,
                                                                       tmp_path: Path) -> None:
    ok = spec(tmp_path, "ok", 'echo "hello from $JOBGRAPH_TASK"; printf 42 > "$JOBGRAPH_RETURN_VALUE_FILE"')
    bad = spec(tmp_path, "bad", "echo about to fail; exit 3")

    async def body(runner: KubernetesRunner) -> tuple[Any, ...]:
        good, failing = await runner.start(ok), await runner.start(bad)
        return (await runner.wait(good), await runner.read_return_value(good, 100), await runner.wait(failing),
                await runner.logs(failing, 1000))

    done, value, failed, tail = run(cluster, body)
    assert (done.status, done.exit_code, value) == (AttemptStatus.DONE, 0, "42")
    assert ok.log_path.read_text() == "hello from ok\n"
    assert (failed.status, failed.exit_code) == (AttemptStatus.FAILED, 3) and "about to fail" in tail


def test_a_job_past_its_deadline_is_a_timeout(cluster: KubernetesSettings, tmp_path: Path) -> None:
    slow = spec(tmp_path, "slow", "sleep 120", timeout=5)
    outcome = run(cluster, lambda runner: _start_and_wait(runner, slow))
    assert outcome.status == AttemptStatus.TIMEOUT


def test_cancel_leaves_no_job_and_no_pod(cluster: KubernetesSettings, tmp_path: Path) -> None:
    long = spec(tmp_path, "long", "sleep 300")

    async def body(runner: KubernetesRunner) -> tuple[Any, ...]:
        handle = await runner.start(long)
        await asyncio.sleep(5)
        await runner.cancel(handle)
        client = AsyncClient(KubeConfig.from_env(), namespace=cluster.namespace)
        try:
            pods = [p async for p in client.list(Pod, namespace=cluster.namespace, labels={"job-name": handle.name})]
        finally:
            await client.close()
        return await runner.wait(handle), pods

    outcome, pods = run(cluster, body)
    assert outcome.status == AttemptStatus.CANCELLED and pods == []


async def _start_and_wait(runner: KubernetesRunner, job: JobSpec) -> Any:
    return await runner.wait(await runner.start(job))
