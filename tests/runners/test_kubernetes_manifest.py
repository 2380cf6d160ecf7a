"""The Kubernetes runner's manifests (layer 1 of its tests): every Job and Pod it would create, checked
against Kubernetes' own OpenAPI schema (kubernetes-validate, strict, a pinned version) and against the
name and label rules the schema does not hold (DNS-1123 labels, label values), which the API server
enforces. No API server can be had here: these checks are what stands for it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from jobgraph.config import load
from jobgraph.engine.run import GraphRun
from jobgraph.runners.base import JobSpec
from jobgraph.runners.kubernetes_manifest import (
    TERMINATION_MESSAGE_PATH,
    KubernetesSettings,
    job_manifest,
    job_name,
    label_value,
    pod_manifest,
    with_pipeline_images,
)
from jobgraph.runners.registry import settings_for

KUBERNETES_VERSION = "1.33"
"""The Kubernetes version whose schema the manifests must satisfy (kubernetes-validate 1.37.0 ships it)."""

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "pipeline-containers.yaml"
RUN_ID = "0b5e3c1e-6f1a-4a3e-9a55-1d2f3e4a5b6c"
OWNER = "build-host:4242:987654"
SECRET = "hunter2-the-real-value"

# The API server's own rules (k8s.io/apimachinery/pkg/util/validation), written out again here rather
# than imported from the module under test.
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def spec(task: str = "t_myjob_1", attempt: int = 1, **fields: Any) -> JobSpec:
    env = {"JOBGRAPH_RUN_ID": RUN_ID, "JOBGRAPH_RETURN_VALUE_FILE": "/home/x/.jobgraph/logs/a.return",
           **fields.pop("env", {})}
    return JobSpec(fields.pop("run_id", RUN_ID), fields.pop("pipeline", "root_task"), task, attempt,
                   fields.pop("image", "localhost/jobgraph-test:latest"), tuple(fields.pop("args", ("echo", "hi"))),
                   env, Path("/tmp/unused.log"), **fields)


def check(manifest: dict[str, Any]) -> None:
    """What the API server would check: the schema (strict: no unknown field), then names and labels."""
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    name = manifest["metadata"]["name"]
    assert len(name) <= 63 and DNS_1123_LABEL.match(name), name
    assert manifest["metadata"]["namespace"]
    templates = [manifest["metadata"]]
    if manifest["kind"] == "Job":
        templates.append(manifest["spec"]["template"]["metadata"])
    for metadata in templates:
        for key, value in metadata["labels"].items():
            assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
            assert LABEL_KEY_NAME.match(key.rpartition("/")[2]) and len(key.rpartition("/")[2]) <= 63, key


def test_every_job_of_the_seed_pipeline_is_a_valid_job_with_its_pool_resources() -> None:
    pipeline = load(SEED, "kubernetes")
    settings = with_pipeline_images(settings_for("kubernetes", pipeline), pipeline.container_images)  # type: ignore[arg-type]
    draft = GraphRun.draft(pipeline, Path("/tmp/logs"), RUN_ID)
    manifests = [job_manifest(draft.spec_for(job, 1), settings, OWNER) for job in pipeline.all_jobs()]
    assert len(manifests) == 6
    for job, manifest in zip(pipeline.all_jobs(), manifests, strict=True):
        check(manifest)
        check(pod_manifest(draft.spec_for(job, 1), settings, OWNER))
    names = {m["metadata"]["name"] for m in manifests}
    assert len(names) == 6
    by_job = {m["metadata"]["annotations"]["jobgraph.io/job"]: m for m in manifests}
    small, standard = by_job["t_myjob_1"], by_job["t_myjob_2"]  # PR_STD_POOL_XS, PR_STD_POOL_S
    assert small["spec"]["backoffLimit"] == 0 and small["metadata"]["namespace"] == "default"
    assert small["spec"]["ttlSecondsAfterFinished"] == 3600 and "activeDeadlineSeconds" not in small["spec"]
    container = small["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "main" and container["image"] == "localhost/jobgraph-sql-job:latest"
    assert container["resources"] == {"requests": {"cpu": "1000m", "memory": "6Gi"}, "limits": {"memory": "6Gi"}}
    assert standard["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "3000m", "memory": "13Gi"}
    assert container["args"] == ["--query=select current_time() as time,'hello'", "--result_table=results_1"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["JOBGRAPH_TASK"] == "t_myjob_1" and env["JOBGRAPH_RETURN_VALUE_FILE"] == TERMINATION_MESSAGE_PATH
    assert container["volumeMounts"] == [{"name": "volume-0", "mountPath": "/data"}]
    assert small["spec"]["template"]["spec"]["volumes"] == [
        {"name": "volume-0", "persistentVolumeClaim": {"claimName": "jobgraph-data"}}]
    labels = small["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "jobgraph" and labels["jobgraph.io/run"] == RUN_ID
    assert labels["jobgraph.io/job"] == "t_myjob_1" and labels["jobgraph.io/attempt"] == "1"
    assert labels["jobgraph.io/owner"] == label_value(OWNER) != OWNER  # ':' is not allowed in a label
    assert small["metadata"]["annotations"]["jobgraph.io/owner"] == OWNER
    assert small["spec"]["template"]["metadata"]["labels"] == labels
    assert "&id" not in yaml.safe_dump(small)  # the pod's labels are not the Job's object: no YAML anchors


def test_the_validator_rejects_a_misspelt_field_so_these_checks_can_fail() -> None:
    manifest = job_manifest(spec(), KubernetesSettings(), OWNER)
    manifest["spec"]["backofLimit"] = manifest["spec"].pop("backoffLimit")
    with pytest.raises(kubernetes_validate.ValidationError, match="backofLimit"):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    container = job_manifest(spec(), KubernetesSettings(), OWNER)
    container["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(container, KUBERNETES_VERSION, strict=True)


def test_secrets_are_passed_by_reference_and_their_value_is_in_no_manifest() -> None:
    settings = KubernetesSettings(secret_name="pipeline-secrets",
                                  secret_refs={"API_TOKEN": {"name": "tokens", "key": "api-token"}})
    attempt = spec(env={"DB_PW": SECRET, "API_TOKEN": SECRET + "2", "MODE": f"fast {SECRET}"},
                   args=("--password", SECRET), secret_names=frozenset({"DB_PW", "API_TOKEN"}),
                   secret_values=frozenset({SECRET, SECRET + "2"}))
    for manifest in (job_manifest(attempt, settings, OWNER), pod_manifest(attempt, settings, OWNER)):
        check(manifest)
        assert SECRET not in repr(manifest)
        pod = manifest["spec"]["template"]["spec"] if manifest["kind"] == "Job" else manifest["spec"]
        env = {item["name"]: item for item in pod["containers"][0]["env"]}
        assert env["DB_PW"] == {"name": "DB_PW", "valueFrom": {"secretKeyRef": {"name": "pipeline-secrets",
                                                                                  "key": "DB_PW"}}}
        assert env["API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "tokens", "key": "api-token"}
        assert env["MODE"] == {"name": "MODE", "value": "fast ***"}
        assert env["JOBGRAPH_RETURN_VALUE_FILE"]["value"] == TERMINATION_MESSAGE_PATH
        assert pod["containers"][0]["terminationMessagePath"] == TERMINATION_MESSAGE_PATH
        assert pod["containers"][0]["args"] == ["--password", "***"]


def test_the_engines_spec_of_a_job_with_secrets_gives_references_only(
        tmp_path: Path, write_pipeline: Any) -> None:
    path = write_pipeline({"defaults": {"runner": "kubernetes"}, "jobs": [
        {"name": "uses", "image": "busybox", "secrets": ["DB_PW"]}, {"name": "other", "image": "busybox"}]})
    pipeline = load(path)
    draft = GraphRun.draft(pipeline, tmp_path / "logs", RUN_ID, secrets={"DB_PW": SECRET})
    uses, other = (job_manifest(draft.spec_for(job, 1), KubernetesSettings(), OWNER) for job in pipeline.jobs)
    assert SECRET not in repr(uses) and SECRET not in repr(other)
    assert uses["spec"]["template"]["spec"]["containers"][0]["env"][-1] == {
        "name": "DB_PW", "valueFrom": {"secretKeyRef": {"name": "jobgraph", "key": "DB_PW"}}}
    assert "DB_PW" not in repr(other)


def test_a_secret_whose_name_cannot_be_a_secret_key_is_refused_unless_mapped() -> None:
    from jobgraph.errors import RunnerError

    attempt = spec(env={"PW$1": "x"}, secret_names=frozenset({"PW$1"}), secret_values=frozenset({"x"}))
    with pytest.raises(RunnerError, match=r"secret PW\$1: 'PW\$1' cannot be a Kubernetes Secret key"):
        job_manifest(attempt, KubernetesSettings(), OWNER)
    mapped = KubernetesSettings(secret_refs={"PW$1": {"key": "pw-1"}})
    check(job_manifest(attempt, mapped, OWNER))


def test_limits_timeouts_and_the_settings_placement_fields_make_a_valid_job() -> None:
    settings = KubernetesSettings(
        namespace="batch-jobs", image_pull_secrets=["regcred", "other.cred"], service_account="runner",
        node_selector={"kubernetes.io/arch": "amd64", "disktype": "ssd"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"},
                     {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}],
        ttl_seconds_after_finished=7200, image_pull_policy="IfNotPresent", cpu_limits=True,
        images={"localhost/jobgraph-test:latest": "registry.example/jobgraph-test:1"})
    attempt = spec(cpu=0.5, memory_bytes=(64 << 20) + 1, timeout=90.2, workdir="/work", network="host", attempt=3)
    manifest = job_manifest(attempt, settings, OWNER)
    check(manifest)
    check(pod_manifest(attempt, settings, OWNER))
    assert manifest["metadata"]["namespace"] == "batch-jobs"
    assert manifest["spec"]["activeDeadlineSeconds"] == 91 and manifest["spec"]["ttlSecondsAfterFinished"] == 7200
    pod = manifest["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other.cred"}]
    assert pod["serviceAccountName"] == "runner" and pod["nodeSelector"]["disktype"] == "ssd"
    assert pod["tolerations"][1] == {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
    assert pod["restartPolicy"] == "Never" and pod["hostNetwork"] is True
    container = pod["containers"][0]
    assert container["image"] == "registry.example/jobgraph-test:1" and container["workingDir"] == "/work"
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": str((64 << 20) + 1)},
                                      "limits": {"cpu": "500m", "memory": str((64 << 20) + 1)}}
    assert container["terminationMessagePolicy"] == "File" and container["imagePullPolicy"] == "IfNotPresent"
    assert manifest["metadata"]["labels"]["jobgraph.io/attempt"] == "3"
    assert pod_manifest(attempt, settings, OWNER)["spec"]["activeDeadlineSeconds"] == 91


def test_long_unicode_and_uppercase_names_give_distinct_valid_stable_names() -> None:
    base = "T_" + "x" * 198  # 200 characters
    names = [base, base[:-1] + "y", "T_" + "x" * 70 + "A", "T_" + "x" * 70 + "B", "MyJob", "myjob", "my_job",
             "my$job", "Über_Jöb_名前", "ÜBER_JÖB_名前", "$$$", "_"]
    specs = [spec(task=name, pipeline="Pipe_Über" + "p" * 100, container_name="Ünïcode",
                  env={"GREETING": "grüße 名前"}, args=("echo", "héllo")) for name in names]
    manifests = [job_manifest(s, KubernetesSettings(), "hôst:1:2") for s in specs]
    for manifest in manifests:
        check(manifest)
    job_names = [m["metadata"]["name"] for m in manifests]
    assert len(set(job_names)) == len(names)
    job_labels = [m["metadata"]["labels"]["jobgraph.io/job"] for m in manifests]
    assert len(set(job_labels)) == len(names)
    assert [m["metadata"]["annotations"]["jobgraph.io/job"] for m in manifests] == names
    assert job_names == [job_name(s) for s in specs]  # stable: the same attempt, the same name
    assert job_names[4].startswith("jg-0b5e3c1e-myjob-a1-")
    assert job_name(spec(task="MyJob", attempt=2)) != job_names[4]
    assert job_name(spec(task="MyJob", run_id=RUN_ID[:-1] + "d")) != job_names[4]  # same first 8 characters
    plan_id = spec(task="t", run_id="<run id>", attempt=10**40)
    check(job_manifest(plan_id, KubernetesSettings(), OWNER))


@pytest.mark.parametrize(("section", "field"), [
    ({"namspace": "x"}, "namspace"),
    ({"namespace": "Not_A_Name"}, "namespace"),
    ({"ttl_seconds_after_finished": "3600"}, "ttl_seconds_after_finished"),
    ({"node_selector": {"disk type": "ssd"}}, "node_selector"),
    ({"tolerations": [{"key": "a", "efect": "NoSchedule"}]}, "efect"),
    ({"tolerations": [{"effect": "NoSchedule", "tolerationSeconds": 5}]}, "tolerationSeconds"),
    ({"image_pull_secrets": "regcred"}, "image_pull_secrets"),
    ({"secret_refs": {"DB_PW": {"key": "a/b"}}}, "key"),
])
def test_bad_settings_are_refused_naming_the_field(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        KubernetesSettings.model_validate(section)
    assert field in str(caught.value)


def test_a_typo_in_the_settings_is_refused_by_validate_naming_file_runner_and_field(
        tmp_path: Path, write_pipeline: Any, cli: Any) -> None:
    path = write_pipeline({"jobs": [{"name": "a", "image": "busybox", "runner": "kubernetes"}],
                           "runners": {"kubernetes": {"namspace": "x", "ttl_seconds_after_finished": "1h"}}})
    result = cli("validate", str(path), check=2)
    assert f"{path}, field 'runners.kubernetes.namspace': unknown field" in result.stderr
    assert "field 'runners.kubernetes.ttl_seconds_after_finished'" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_refuses_what_no_job_manifest_can_hold_before_anything_runs(
        tmp_path: Path, write_pipeline: Any, cli: Any) -> None:
    path = write_pipeline({"jobs": [{"name": "a", "image": "busybox", "volumes": {"./in": "/in"},
                                     "secrets": ["PW$1", "OK_PW"]}]})
    result = cli("validate", str(path), "--runner", "kubernetes", check=2)
    assert "job 'a', field 'volumes': volume './in' has no PersistentVolumeClaim" in result.stderr
    assert "job 'a', field 'secrets': secret PW$1: 'PW$1' cannot be a Kubernetes Secret key" in result.stderr
    assert "OK_PW" not in result.stderr
    cli("validate", str(path), "--runner", "podman", check=0)  # a container runner takes them as they are
    path = write_pipeline({"jobs": [{"name": "a", "image": "busybox", "volumes": {"./in": "/in"},
                                     "secrets": ["PW$1"]}],
                           "runners": {"kubernetes": {"volume_claims": {"./in": "in"},
                                                      "secret_refs": {"PW$1": {"key": "pw1"}}}}})
    cli("validate", str(path), "--runner", "kubernetes", check=0)


def test_a_volume_without_a_claim_is_refused_with_the_fix() -> None:
    from jobgraph.errors import RunnerError

    with pytest.raises(RunnerError, match=r"volume '\.' has no PersistentVolumeClaim.*volume_claims"):
        job_manifest(spec(volumes={".": "/data:ro"}), KubernetesSettings(), OWNER)
    manifest = job_manifest(spec(volumes={".": "/data:ro"}), KubernetesSettings(volume_claims={".": "c"}), OWNER)
    check(manifest)
    assert manifest["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "volume-0", "mountPath": "/data", "readOnly": True}]


# Layer 3: the pod template really run, by `podman kube play` (Podman 4.3 has no Job kind, hence the Pod).
# What it shows: the image, args, env, limits and labels of the generated pod are what a container runtime
# takes, and the exit code comes back; not Job semantics (deadline, TTL, backoff), nor secretKeyRef, which
# Podman 4.3 cannot resolve from a Kubernetes Secret.

TEST_IMAGE = "localhost/jobgraph-test:latest"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run `bash scripts/setup-podman.sh`", pytrace=False)
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)
    assert not check or result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_pod_template_runs_under_podman_kube_play_with_its_env_limits_labels_and_exit_code(
        tmp_path: Path) -> None:
    if podman("image", "exists", TEST_IMAGE, check=False).returncode != 0:
        pytest.fail(f"image {TEST_IMAGE} is missing: run `bash scripts/build-images.sh`", pytrace=False)
    script = ("echo task=$JOBGRAPH_TASK greeting=$GREETING; "
              "echo memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); "
              "echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); "
              "echo returned > $JOBGRAPH_RETURN_VALUE_FILE; echo return=$JOBGRAPH_RETURN_VALUE_FILE:$(cat "
              "$JOBGRAPH_RETURN_VALUE_FILE); exit 3")
    attempt = spec(task="Über_Job", run_id=str(uuid.uuid4()), image=TEST_IMAGE, args=("/bin/sh", "-c", script),
                   env={"JOBGRAPH_TASK": "Über_Job", "GREETING": "grüße, 名前 'quoted' $HOME"},
                   cpu=0.5, memory_bytes=64 << 20, timeout=60)
    settings = KubernetesSettings(image_pull_policy="Never", cpu_limits=True)
    manifest = pod_manifest(attempt, settings, OWNER)
    check(manifest)
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    pod = manifest["metadata"]["name"]
    listed = ("ps", "-a", "--filter", f"label=jobgraph.io/run={attempt.run_id}", "--format", "{{.Names}}")
    try:
        podman("kube", "play", str(path))
        assert podman("wait", f"{pod}-main").stdout.strip() == "3"
        state = json.loads(podman("inspect", f"{pod}-main").stdout)[0]["State"]
        assert state["ExitCode"] == 3
        out = podman("logs", f"{pod}-main").stdout.splitlines()
        assert out == ["task=Über_Job greeting=grüße, 名前 'quoted' $HOME", f"memory={64 << 20}", "quota=50000",
                       f"return={TERMINATION_MESSAGE_PATH}:returned"]
        labels = json.loads(podman("pod", "inspect", pod).stdout)["Labels"]
        assert {key: labels[key] for key in manifest["metadata"]["labels"]} == manifest["metadata"]["labels"]
        assert labels["jobgraph.io/job"] == label_value("Über_Job") and labels["jobgraph.io/attempt"] == "1"
        assert f"{pod}-main" in podman(*listed).stdout.split()  # the check below sees the pod's containers
    finally:
        podman("kube", "down", str(path), check=False)
    assert podman("pod", "exists", pod, check=False).returncode == 1
    assert podman(*listed).stdout.strip() == ""
