"""The Kubernetes runner's state machine against kmock's API server emulator (kube_emulator.py says what that
proves and what it cannot): real HTTP, the real lightkube client, and the test as the Job controller.

Each test drives KubernetesRunner with JobSpecs as the engine does, and checks the objects and requests
the API saw, and the attempt's log file.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from lightkube.resources.batch_v1 import Job
from lightkube.types import PatchType

from jobgraph.errors import RunnerError
from jobgraph.runners.base import Cause, JobSpec
from jobgraph.runners.kubernetes import KubernetesRunner
from jobgraph.runners.kubernetes_manifest import KubernetesSettings, job_name
from jobgraph.runners.kubernetes_states import outcome_of
from jobgraph.states import AttemptStatus
from tests.runners.kube_emulator import JOBS, NAMESPACE, Controller, KubeServer, kube, watch_lost_then_gone

__all__ = ["kube"]  # the fixture, used by name

T = TypeVar("T")
Scenario = Callable[[KubernetesRunner, Controller], Awaitable[T]]


def make_spec(tmp_path: Path, task: str = "load", attempt: int = 1, **fields: Any) -> JobSpec:
    return JobSpec("run-1", "p", task, attempt, "busybox:1.36", ("sh", "-c", "echo hi"), {"JOBGRAPH_TASK": task},
                   tmp_path / "logs" / task / f"attempt-{attempt}.log", **fields)


def play(kube: KubeServer, scenario: Scenario[T], opened: bool = True, **settings: Any) -> T:
    """Run a scenario with a runner (opened, as the engine does) and a controller, both closed after it (and their
    watch streams)."""

    async def main() -> T:
        runner = KubernetesRunner(KubernetesSettings(namespace=NAMESPACE, **settings))
        controller = Controller(kube)
        try:
            if opened:
                await runner.open()
            return await asyncio.wait_for(scenario(runner, controller), 30)
        finally:
            await runner.aclose()
            await controller.close()

    return asyncio.run(main())


def log_requests(kube: KubeServer) -> list[dict[str, str]]:
    return [dict(r.params) for r in kube.requests() if str(r.url).split("?")[0].endswith("/log")]


def test_a_job_that_ends_with_exit_0_is_done_with_its_return_value_and_log(kube: KubeServer, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, secret_values=frozenset({"hunter2"}))

    async def scenario(runner: KubernetesRunner, ctl: Controller) -> tuple[Any, ...]:
        handle = await runner.start(spec)
        job = await ctl.job(runner.handle_ref(handle))
        pod = await ctl.start_pod(job)
        await ctl.container(pod, {"running": {"startedAt": "2026-01-02T03:04:00Z"}})
        kube.serve_log(pod, "loading\npassword hunter2\nloaded 42 rows\n")
        await ctl.end(pod, 0, message="42 rows")
        await ctl.finish(job["metadata"]["name"])
        outcome = await runner.wait(handle)
        return handle, job, outcome, await runner.read_return_value(handle, 1000)

    handle, job, outcome, value = play(kube, scenario)
    assert (outcome.status, outcome.exit_code, outcome.error) == (AttemptStatus.DONE, 0, None)
    assert outcome.ended_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # the container's end, not "now"
    assert value == "42 rows"
    assert handle.name == job_name(spec) == job["metadata"]["name"]
    assert job["metadata"]["namespace"] == NAMESPACE and job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["labels"]["jobgraph.io/run"] == "run-1"
    assert spec.log_path.read_text() == "loading\npassword ***\nloaded 42 rows\n"
    [read] = log_requests(kube)
    assert read["container"] == "main" and int(read["tailLines"]) > 0 and read.get("follow") != "true"


def test_a_failing_job_has_its_exit_code_and_the_end_of_its_log(kube: KubeServer, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)

    async def scenario(runner: KubernetesRunner, ctl: Controller) -> tuple[Any, ...]:
        handle = await runner.start(spec)
        job = await ctl.job()
        pod = await ctl.start_pod(job)
        kube.serve_log(pod, "".join(f"line {i}\n" for i in range(100)) + "boom: table missing\n")
        await ctl.end(pod, 3)
        await ctl.finish(job["metadata"]["name"], "Failed", "BackoffLimitExceeded", "Job has reached the "
                         "specified backoff limit")
        outcome = await runner.wait(handle)
        return outcome, await runner.logs(handle, 30), await runner.read_return_value(handle, 100)

    outcome, tail, value = play(kube, scenario)
    assert (outcome.status, outcome.exit_code, outcome.error) == (AttemptStatus.FAILED, 3, "exit code 3")
    assert tail.endswith("boom: table missing\n") and len(tail) <= 30
    assert value is None
    assert "line 0\n" in spec.log_path.read_text()


def test_a_container_over_its_memory_limit_is_failed_as_out_of_memory(kube: KubeServer, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, memory_bytes=64 << 20)

    async def scenario(runner: KubernetesRunner, ctl: Controller) -> tuple[Any, ...]:
        handle = await runner.start(spec)
        job = await ctl.job()
        pod = await ctl.start_pod(job)
        await ctl.end(pod, 137, reason="OOMKilled")
        await ctl.finish(job["metadata"]["name"], "Failed", "BackoffLimitExceeded")
        return job, await runner.wait(handle)

    job, outcome = play(kube, scenario)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "64Mi"
    assert (outcome.status, outcome.exit_code) == (AttemptStatus.FAILED, 137)
    assert outcome.error == "out of memory (memory limit 64 MiB): Kubernetes killed the container (OOMKilled, " \
                            "exit code 137)"
    assert outcome.cause == Cause.OOM  # what retry_on: [oom] matches


def test_a_job_past_its_deadline_is_a_timeout(kube: KubeServer, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, timeout=5)

    async def scenario(runner: KubernetesRunner, ctl: Controller) -> tuple[Any, ...]:
        handle = await runner.start(spec)
        job = await ctl.job()
        pod = await ctl.start_pod(job)
        await ctl.container(pod, {"running": {}})
        await ctl.end(pod, 143)
        await ctl.finish(job["metadata"]["name"], "Failed", "DeadlineExceeded", "Job was active longer than "
                         "specified deadline")
        return job, await runner.wait(handle)

    job, outcome = play(kube, scenario)
    assert job["spec"]["activeDeadlineSeconds"] == 5
    assert (outcome.status, outcome.exit_code) == (AttemptStatus.TIMEOUT, 143)
    assert outcome.error == "Kubernetes stopped the Job at its deadline (deadline 5s): DeadlineExceeded (Job was " \
                            "active longer than specified deadline)"


def test_an_evicted_pod_is_an_error_that_may_be_retried(kube: KubeServer, tmp_path: Path) -> None:
    async def scenario(runner: KubernetesRunner, ctl: Controller) -> Any:
        handle = await runner.start(make_spec(tmp_path))
        job = await ctl.job()
        pod = await ctl.start_pod(job)
        await ctl.container(pod, {"running": {}})
        await ctl.pod_status(pod, {"phase": "Failed", "reason": "Evicted",
                                   "message": "The node was low on resource: memory."})
        await ctl.finish(job["metadata"]["name"], "Failed", "BackoffLimitExceeded")
        return await runner.wait(handle)

    outcome = play(kube, scenario)
    assert outcome.status == AttemptStatus.ERROR
    assert outcome.error == "the pod was evicted from its node: The node was low on resource: memory.; not the " \
                            "job's fault, so it may be retried"
    assert outcome.cause == Cause.LOST  # what retry_on: [lost] matches


def test_a_pod_deleted_for_its_lost_node_is_lost() -> None:
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}
    pod = {"status": {"phase": "Failed", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
         "message": "PodGC: node no longer exists"}],
        "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}}
    outcome = outcome_of(job, pod)
    assert (outcome.status, outcome.cause) == (AttemptStatus.ERROR, Cause.LOST)
    assert outcome.error is not None and outcome.error.startswith(
        "the pod was disrupted (DeletionByPodGC: PodGC: node no longer exists)")
    pod["status"]["conditions"] = []
    assert outcome_of(job, pod).cause is None


@pytest.mark.parametrize(("status", "reason"), [
    ({"containerStatuses": [{"name": "main", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                             "state": {"waiting": {"reason": "ImagePullBackOff",
                                                   "message": 'Back-off pulling image "busybox:1.36"'}}}]},
     'ImagePullBackOff: Back-off pulling image "busybox:1.36"'),
    ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/3 nodes are available: 3 Insufficient memory."}]},
     "Unschedulable: 0/3 nodes are available: 3 Insufficient memory."),
])
def test_a_pod_that_cannot_start_is_an_error_after_the_pending_limit_and_its_job_is_deleted(
        kube: KubeServer, tmp_path: Path, status: dict[str, Any], reason: str) -> None:
    async def scenario(runner: KubernetesRunner, ctl: Controller) -> tuple[Any, ...]:
        handle = await runner.start(make_spec(tmp_path))
        job = await ctl.job()
        pod = await ctl.start_pod(job)
        await ctl.pod_status(pod, {"phase": "Pending", **status})
        loop = asyncio.get_running_loop()
        stuck_at = loop.time()
        outcome = await runner.wait(handle)
        return job, outcome, loop.time() - stuck_at

    job, outcome, waited = play(kube, scenario, pending_limit_secs=0.6)
    assert waited >= 0.6
    assert outcome.status == AttemptStatus.ERROR
    assert outcome.error == f"the pod could not start for 0.6s: {reason}; deleted Job {job['metadata']['name']}"
    [delete] = kube.requests("delete", JOBS)
    assert dict(delete.params) == {"propagationPolicy": "Background"}


def test_a_watch_that_gets_410_lists_again_and_misses_no_end(kube: KubeServer, tmp_path: Path) -> None:
    lost = threading.Event()
    kube.call(lambda e: e["watch", JOBS][:1] << (lambda _request: watch_lost_then_gone(lost)))

    async def scenario(runner: KubernetesRunner, ctl: Controller) -> Any:
        handle = await runner.start(make_spec(tmp_path))
        job = await ctl.job()
        pod = await ctl.start_pod(job)
        await ctl.end(pod, 0, message="done")
        await ctl.finish(job["metadata"]["name"])  # its event goes to the stream that swallows it
        await asyncio.sleep(0.2)
        assert not handle.outcome.done()
        lost.set()  # 410: the runner must list again, and find the Job ended
        return await runner.wait(handle), runner.relists, await runner.read_return_value(handle, 100)

    outcome, relists, value = play(kube, scenario)
    assert (outcome.status, value, relists) == (AttemptStatus.DONE, "done", 1)
    assert len(kube.requests("list", JOBS)) >= 3  # open's check, the first list, the fresh one after the 410


def test_cancel_deletes_the_job_in_the_background_and_returns_once_its_pod_is_gone(
        kube: KubeServer, tmp_path: Path) -> None:
    async def scenario(runner: KubernetesRunner, ctl: Controller) -> tuple[Any, ...]:
        handle = await runner.start(make_spec(tmp_path))
        job = await ctl.job()
        name = job["metadata"]["name"]
        pod = await ctl.start_pod(job)
        await ctl.container(pod, {"running": {}})
        cancelling = asyncio.create_task(runner.cancel(handle))
        while not kube.requests("delete", JOBS):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        still_waiting = not cancelling.done()  # the Job is gone, its pod is not yet
        await ctl.collect_garbage(name)
        await cancelling
        return still_waiting, await runner.wait(handle), await ctl.pods_of(name), name

    still_waiting, outcome, pods, name = play(kube, scenario)
    assert still_waiting
    assert (outcome.status, outcome.error) == (AttemptStatus.CANCELLED, "cancelled by jobgraph (Job deleted)")
    assert pods == []
    [delete] = kube.requests("delete", JOBS)
    assert dict(delete.params) == {"propagationPolicy": "Background"} and str(delete.url).split("?")[0].endswith(
        f"/namespaces/{NAMESPACE}/jobs/{name}")
    assert kube.call(lambda e: [key for key in e.objects if not e.objects[key].deleted]) == []


def test_a_job_whose_creation_answer_was_lost_is_taken_not_created_twice_and_another_attempts_is_refused(
        kube: KubeServer, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)

    async def scenario(runner: KubernetesRunner, ctl: Controller) -> Any:
        first = await runner.start(spec)
        again = await runner.start(spec)  # as after a create whose answer never came back: 409, and it is ours
        job = await ctl.job()
        await ctl.client.patch(Job, job["metadata"]["name"], {"metadata": {"labels": {"jobgraph.io/attempt": "9"}}},
                               namespace=NAMESPACE, patch_type=PatchType.MERGE)
        with pytest.raises(RunnerError, match=r"a Job named .* already exists in namespace jg-test and is not this "
                                              r"attempt's"):
            await runner.start(spec)
        return first is again

    assert play(kube, scenario)
    assert len(kube.requests("create", JOBS)) == 3
    assert kube.call(lambda e: len([key for key in e.objects if not e.objects[key].deleted])) == 1


def test_one_runner_follows_attempts_of_two_runs_with_one_watch_that_takes_the_second_run_in(
        kube: KubeServer, tmp_path: Path) -> None:
    async def scenario(runner: KubernetesRunner, ctl: Controller) -> Any:
        first = await runner.start(make_spec(tmp_path, "a"))
        await asyncio.sleep(0.2)  # the watch runs, selecting run-1 only
        second = await runner.start(JobSpec("run-2", "p", "b", 1, "busybox:1.36", (), {}, tmp_path / "b.log"))
        for handle in (second, first):
            job = await ctl.job(handle.name)
            await ctl.end(await ctl.start_pod(job), 0)
            await ctl.finish(handle.name)
        return [(await runner.wait(h)).status for h in (first, second)]

    assert play(kube, scenario) == [AttemptStatus.DONE, AttemptStatus.DONE]
    selectors = [dict(r.params).get("labelSelector", "") for r in kube.requests("list", JOBS)]
    assert any("jobgraph.io/run in (run-1,run-2)" in selector for selector in selectors), selectors


def test_a_new_runner_adopts_a_job_by_its_name_and_gets_the_end_it_had_while_nobody_watched(
        kube: KubeServer, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)

    async def first(runner: KubernetesRunner, ctl: Controller) -> str:
        handle = await runner.start(spec)
        pod = await ctl.start_pod(await ctl.job())
        await ctl.container(pod, {"running": {}})
        return runner.handle_ref(handle)  # then this jobgraph goes away (aclose): the Job goes on

    reference = play(kube, first)

    async def meanwhile(_runner: KubernetesRunner, ctl: Controller) -> None:
        [pod] = await ctl.pods_of(reference)
        kube.serve_log(pod["metadata"]["name"], "finished alone\n")
        await ctl.end(pod["metadata"]["name"], 0, message="7")
        await ctl.finish(reference)

    play(kube, meanwhile)

    async def second(runner: KubernetesRunner, _ctl: Controller) -> tuple[Any, ...]:
        handle = await runner.adopt(reference, spec)
        return await runner.wait(handle), await runner.read_return_value(handle, 100)

    outcome, value = play(kube, second)
    assert (outcome.status, outcome.exit_code, value) == (AttemptStatus.DONE, 0, "7")
    assert outcome.ended_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert spec.log_path.read_text() == "finished alone\n"
    assert len(kube.requests("create", JOBS)) == 1  # adopted, never created again


def test_recovery_cancels_with_a_runner_it_did_not_open_and_a_job_that_had_ended_keeps_its_end(
        kube: KubeServer, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)

    async def lost(runner: KubernetesRunner, ctl: Controller) -> str:
        handle = await runner.start(spec)
        pod = await ctl.start_pod(await ctl.job())
        kube.serve_log(pod, "ended alone\n")
        await ctl.end(pod, 4)
        await ctl.finish(handle.name, "Failed", "BackoffLimitExceeded")
        return runner.handle_ref(handle)

    async def recover(runner: KubernetesRunner, ctl: Controller) -> tuple[Any, ...]:
        handle = await runner.adopt(reference, spec)
        cancelling = asyncio.create_task(runner.cancel(handle))
        while not kube.requests("delete", JOBS):
            await asyncio.sleep(0.01)
        await ctl.collect_garbage(reference)
        await cancelling
        return await runner.wait(handle), await ctl.pods_of(reference)

    reference = play(kube, lost, pending_limit_secs=60)
    outcome, pods = play(kube, recover, opened=False)
    assert (outcome.status, outcome.exit_code, outcome.error) == (AttemptStatus.FAILED, 4, "exit code 4")
    assert spec.log_path.read_text() == "ended alone\n" and pods == []
    [delete] = kube.requests("delete", JOBS)
    assert dict(delete.params) == {"propagationPolicy": "Background"}


def test_adopting_a_job_that_is_gone_or_another_attempts_is_an_error(kube: KubeServer, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)

    async def scenario(runner: KubernetesRunner, _ctl: Controller) -> Any:
        with pytest.raises(RunnerError, match="is not the Job of load attempt 1"):
            await runner.adopt(job_name(make_spec(tmp_path, attempt=2)), spec)
        return await runner.wait(await runner.adopt(job_name(spec), spec))

    outcome = play(kube, scenario)
    assert outcome.status == AttemptStatus.ERROR
    assert outcome.error == f"Job {job_name(spec)} is gone from namespace {NAMESPACE} (deleted before it ended, " \
                            "or never created)"


def test_an_api_that_does_not_answer_stops_the_run_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: k, cluster: {server: "
                      "'http://127.0.0.1:9'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: c, "
                      "context: {cluster: k, user: u}}]\n")
    monkeypatch.setenv("KUBECONFIG", str(config))
    with pytest.raises(RunnerError, match=r"the Kubernetes API at http://127\.0\.0\.1:9 does not answer"):
        asyncio.run(KubernetesRunner(KubernetesSettings()).open())
    with pytest.raises(RunnerError, match=r"runners.kubernetes: Context 'elsewhere' not found"):
        asyncio.run(KubernetesRunner(KubernetesSettings(context="elsewhere")).open())
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(RunnerError, match="cannot load the Kubernetes configuration from the in-cluster service"):
        asyncio.run(KubernetesRunner(KubernetesSettings()).open())
