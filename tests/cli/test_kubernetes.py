"""A pipeline run by `jobgraph run --runner kubernetes` against kmock's API emulator (tests/runners/kube_emulator.py),
recorded in the store as every runner's attempts are, with each attempt's Job name as its backend handle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobgraph.runners.base import JobSpec
from jobgraph.runners.kubernetes_manifest import job_name
from jobgraph.store import Store
from tests.conftest import Cli, WritePipeline, store_url
from tests.runners.kube_emulator import JOBS, NAMESPACE, AutoController, KubeServer, kube

__all__ = ["kube"]  # the fixture, used by name


def ends(job: dict[str, Any]) -> tuple[int, str | None, str]:
    """extract returns a value; load fails its first attempt with exit code 3, then succeeds."""
    labels = job["metadata"]["labels"]
    task, attempt = labels["jobgraph.io/job"], labels["jobgraph.io/attempt"]
    if task == "load" and attempt == "1":
        return 3, None, "load: table missing\n"
    return 0, f"value of {task}", f"{task} attempt {attempt} ok\n"


def test_a_pipeline_runs_as_kubernetes_jobs_and_the_store_records_each_attempt_with_its_job_name(
        kube: KubeServer, tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "p", "runners": {"kubernetes": {"namespace": NAMESPACE}},
                    "jobs": [{"name": "extract", "image": "busybox:1.36", "args": ["echo extract"]},
                             {"name": "load", "image": "busybox:1.36", "args": ["echo load"], "after": ["extract"],
                              "retries": 1}]}, with_sh=False)
    with AutoController(kube, ends) as controller:
        result = cli("run", "pipeline.yaml", "--runner", "kubernetes", check=0, timeout=90)
    assert controller.error is None
    assert "load SUCCEEDED attempt 2" in result.stdout
    with Store(store_url(tmp_path)) as records:
        [run] = records.runs()
        attempts = [(a.task, a.attempt, a.status, a.exit_code, a.runner, a.backend_ref)
                    for a in records.attempts(run.run_id)]
        tasks = {t.task: t.return_value for t in records.tasks(run.run_id)}
        [failed] = [a for a in records.attempts(run.run_id, "load") if a.attempt == 1]

    def name(task: str, attempt: int) -> str:
        return job_name(JobSpec(run.run_id, "p", task, attempt, "", (), {}, Path()))

    assert run.state == "SUCCEEDED"
    assert sorted(attempts) == [("extract", 1, "DONE", 0, "kubernetes", name("extract", 1)),
                                ("load", 1, "FAILED", 3, "kubernetes", name("load", 1)),
                                ("load", 2, "DONE", 0, "kubernetes", name("load", 2))]
    assert controller.seen == [name("extract", 1), name("load", 1), name("load", 2)]
    assert tasks == {"extract": "value of extract", "load": "value of load"}
    assert failed.error is not None and failed.error.startswith("exit code 3") and "load: table missing" in failed.error
    assert failed.log_path.read_text() == "load: table missing\n"
    assert len(kube.requests("create", JOBS)) == 3


def test_without_the_kubernetes_extra_the_run_stops_before_anything_runs_and_says_what_to_install(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "blocked" / "lightkube"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError(\"No module named 'lightkube'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(blocked.parent))
    write_pipeline({"name": "p", "jobs": [{"name": "a", "image": "busybox:1.36", "runner": "kubernetes"}]},
                   with_sh=False)
    result = cli("run", "pipeline.yaml", check=2)
    assert result.stderr == "error: the kubernetes runner needs lightkube: pip install 'jobgraph[kubernetes]'\n"
    with Store(store_url(tmp_path)) as records:
        assert records.runs() == []
