"""`jobgraph plan`: what each job's first attempt would submit, on every runner, with nothing run or written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import kubernetes_validate
import yaml

from tests.conftest import WritePipeline, sh

SECRET = "s3cr3t-value-that-must-not-show"


def plan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "API_TOKEN": SECRET}
    return subprocess.run([sys.executable, "-m", "jobgraph", "plan", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_plan_shows_each_runners_submission_with_secrets_as_references_and_writes_nothing(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({
        "schedule": "USING CRON 0 9 * * * Europe/Paris",
        "runners": {"slurm": {"pool_partitions": {"small": "debug"}}},
        "pools": {"small": {"max_parallel": 1, "cpu": 1, "memory": "64m"}},
        "images": {"sh": ["sh", "-c"], "busybox": ["sh", "-c"]},
        "jobs": [
            sh("here", "echo $API_TOKEN", secrets=["API_TOKEN"], env={"MODE": "fast"}),
            {"name": "boxed", "image": "busybox", "args": ["echo hi"], "runner": "podman", "pool": "small",
             "after": ["here"], "secrets": ["API_TOKEN"]},
            {"name": "batch", "image": "busybox", "args": ["echo hi"], "runner": "slurm", "pool": "small",
             "after": ["boxed"], "timeout": "90s"},
        ]})
    result = plan(tmp_path, str(path))
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    document = yaml.safe_load(result.stdout)
    here, boxed, batch = document["jobs"]
    assert here["runner"] == "local" and here["argv"] == ["sh", "-c", "echo $API_TOKEN"]
    assert here["env"]["API_TOKEN"] == "${API_TOKEN}" and here["env"]["MODE"] == "fast"
    assert boxed["runner"] == "podman" and boxed["create"]["environment"]["API_TOKEN"] == "${API_TOKEN}"
    assert boxed["create"]["mem_limit"] == 64 << 20 and boxed["after"] == ["here"]
    assert batch["runner"] == "slurm" and "--time=2" in batch["argv"] and "--mem=64M" in batch["argv"]
    assert "--partition=debug" in batch["argv"]  # the pool's partition
    assert "sh -c 'echo hi'" in batch["stdin"]
    fires = [datetime.fromisoformat(moment) for moment in document["schedule"]["next"]]
    assert len(fires) == 5 and all(f.hour == 9 and f.minute == 0 for f in fires)
    assert all(f.utcoffset() is not None and f.utcoffset().total_seconds() in (3600, 7200) for f in fires)
    assert sorted(fires) == fires
    assert not (tmp_path / ".jobgraph").exists()
    as_json = json.loads(plan(tmp_path, str(path), "--format", "json", "--runner", "local").stdout)
    assert {job["runner"] for job in as_json["jobs"]} == {"local"}


def test_plan_of_a_bad_file_runs_nothing(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [sh("a", "true", runner="slurm", after=["nope"])]})
    result = plan(tmp_path, str(path))
    assert result.returncode == 2 and "unknown predecessor 'nope'" in result.stderr


SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "pipeline-containers.yaml"


def test_plan_of_a_first_copy_whose_item_lacks_a_field_names_the_job_without_a_traceback(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [{"name": "per_file", "for_each": ["a", {"path": "b"}],
                                     "command": ["echo", "{{ item.path }}"]}]})
    for output in ("yaml", "json"):
        result = plan(tmp_path, str(path), "--format", output)
        assert result.returncode == 2 and result.stdout == ""
        assert (f"error: {path}, job 'per_file', field 'for_each': its first attempt cannot be filled in: "
                "'item.path' has no value here") in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / ".jobgraph").exists()


def test_plan_prints_the_seeds_kubernetes_jobs_as_one_yaml_stream_kubectl_takes(tmp_path: Path) -> None:
    result = plan(tmp_path, str(SEED), "--runner", "kubernetes", "--format", "yaml")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("# jobgraph plan: pipeline root_task")
    documents = list(yaml.safe_load_all(result.stdout))
    assert len(documents) == 6 and all(d["kind"] == "Job" and d["apiVersion"] == "batch/v1" for d in documents)
    for document in documents:
        kubernetes_validate.validate(document, "1.33", strict=True)
        assert document["metadata"]["namespace"] == "default" and document["spec"]["backoffLimit"] == 0
    assert [d["metadata"]["annotations"]["jobgraph.io/job"] for d in documents] == [
        "t_myjob_1", "t_myjob_2", "t_myjob_3", "t_myjob_4", "t_myjob_5", "t_myjob_6"]
    assert len({d["metadata"]["name"] for d in documents}) == 6
    assert not (tmp_path / ".jobgraph").exists()


def test_plan_shows_kubernetes_secrets_as_references_in_yaml_and_json(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({
        "defaults": {"runner": "kubernetes", "timeout": "90s"},
        "runners": {"kubernetes": {"namespace": "batch", "secret_name": "app-secrets"}},
        "pools": {"small": {"max_parallel": 1, "cpu": 0.25, "memory": "64m"}},
        "jobs": [{"name": "use_token", "image": "busybox", "args": ["sh", "-c", "echo $API_TOKEN"],
                  "secrets": ["API_TOKEN"], "pool": "small"}]})
    result = plan(tmp_path, str(path))  # yaml is the default format
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    (job,) = yaml.safe_load_all(result.stdout)
    kubernetes_validate.validate(job, "1.33", strict=True)
    assert job["metadata"]["namespace"] == "batch" and job["spec"]["activeDeadlineSeconds"] == 90
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env["API_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "app-secrets", "key": "API_TOKEN"}}
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "64Mi"}}
    as_json = plan(tmp_path, str(path), "--format", "json")
    assert as_json.returncode == 0 and SECRET not in as_json.stdout
    (planned,) = json.loads(as_json.stdout)["jobs"]
    assert planned["runner"] == "kubernetes"
    for manifest in (planned["manifest"], job):  # the one value that differs: when each plan was made
        manifest["spec"]["template"]["spec"]["containers"][0]["env"] = [
            item for item in manifest["spec"]["template"]["spec"]["containers"][0]["env"]
            if item["name"] != "JOBGRAPH_SCHEDULED_TIME"]
    assert planned["manifest"] == job


def test_plan_of_a_pipeline_with_other_runners_keeps_its_yaml_document(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [sh("here", "true"),
                                     {"name": "there", "image": "busybox", "runner": "kubernetes", "after": ["here"]}]})
    result = plan(tmp_path, str(path))
    assert result.returncode == 0, result.stderr
    here, there = yaml.safe_load(result.stdout)["jobs"]
    assert here["runner"] == "local" and there["manifest"]["kind"] == "Job"


def test_plan_refuses_what_a_cluster_cannot_run_and_bad_kubernetes_settings(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    job = {"name": "a", "image": "busybox", "volumes": {".": "/data"}}
    path = write_pipeline({"jobs": [job]})
    result = plan(tmp_path, str(path), "--runner", "kubernetes")
    assert result.returncode == 2 and result.stdout == ""
    assert "job 'a', field 'volumes': volume '.' has no PersistentVolumeClaim" in result.stderr
    assert "Traceback" not in result.stderr
    path = write_pipeline({"jobs": [job], "runners": {"kubernetes": {"volume_claim": {".": "data"}}}})
    result = plan(tmp_path, str(path), "--runner", "kubernetes")
    assert result.returncode == 2 and "field 'runners.kubernetes.volume_claim': unknown field" in result.stderr
