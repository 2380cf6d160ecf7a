"""Placeholders in the engine: filled per attempt from `Attempts.template_values`, and never looked at for the
jobs without any (the fast path a 10,000-job run takes)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from jobgraph.config import Pipeline
from jobgraph.config.validate import check_pipeline
from jobgraph.engine import templating
from jobgraph.engine.run import GraphRun
from jobgraph.engine.templating import needs_rendering
from jobgraph.runners.local import LocalRunner
from jobgraph.states import RunState
from tests.engine.test_run import closing


def make(jobs: list[dict[str, Any]], **fields: Any) -> Pipeline:
    return check_pipeline(Pipeline.model_validate({"name": "p", "jobs": jobs, **fields}), "test")


def test_jobs_without_placeholders_are_never_rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = templating.rendered
    monkeypatch.setattr("jobgraph.engine.attempt.rendered",
                        lambda job, values: calls.append(job.name) or real(job, values))
    out = tmp_path / "out"
    pipeline = make([{"name": f"plain{i}", "command": ["sh", "-c", f"echo {i} >> {out}"], "env": {"A": "b"}}
                     for i in range(20)] + [{"name": "templated", "command": ["sh", "-c", f"echo $0 >> {out}",
                                                                              "{{ params.word }}"]}],
                    params=[{"name": "word", "default": "hello"}])
    runner = LocalRunner({}, cwd=tmp_path)
    graph_run = GraphRun(pipeline, lambda _job: runner, [], tmp_path / "logs", params={"word": "hello"})
    assert closing(runner, graph_run.run()).state == RunState.SUCCEEDED
    assert calls == ["templated"]
    assert sorted(out.read_text().split()) == sorted([*map(str, range(20)), "hello"])


def test_the_template_values_of_an_attempt(tmp_path: Path) -> None:
    pipeline = make([{"name": "a", "command": ["true"]}], params=[{"name": "n", "type": "integer", "default": 1}])
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    draft = GraphRun(pipeline, lambda _job: LocalRunner({}), [], tmp_path, run_id="r1", scheduled_time=moment,
                     params={"n": 4})
    assert draft._attempts.template_values(pipeline.jobs[0], 3) == {
        "params": {"n": 4}, "scheduled_time": "2030-01-02T03:04:05+00:00", "run_id": "r1", "pipeline": "p",
        "job": "a", "attempt": 3}
    spec = draft.spec_for(make([{"name": "a", "command": ["echo", "{{ attempt }}:{{ params.n }}"],
                                 "env": {"AT": "{{ scheduled_time }}"}}],
                               params=[{"name": "n", "type": "integer"}]).jobs[0], 2)
    assert spec.command == ("echo", "2:4") and spec.env["AT"] == "2030-01-02T03:04:05+00:00"
    assert spec.env["JOBGRAPH_PARAMS"] == '{"n": 4}'


def test_needs_rendering_looks_at_command_args_and_env_values_only() -> None:
    jobs = make([{"name": "a", "command": ["true"], "args": ["x"], "env": {"K": "v"}},
                 {"name": "b", "command": ["echo", "{{ run_id }}"]},
                 {"name": "c", "command": ["true"], "args": ["{{ job }}"]},
                 {"name": "d", "command": ["true"], "env": {"K": "{{ job }}"}}]).jobs
    assert [needs_rendering(job) for job in jobs] == [False, True, True, True]
