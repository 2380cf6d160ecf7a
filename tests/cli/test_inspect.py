"""validate and graph as a user meets them: machine-readable output stays machine-readable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import SEED, WritePipeline


def graph(tmp_path: Path, path: Path, *args: str) -> str:
    """`jobgraph graph` on a narrow terminal width, where wrapping would show."""
    env = {**os.environ, "COLUMNS": "20", "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    result = subprocess.run([sys.executable, "-m", "jobgraph", "graph", str(path), *args], env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout


def test_dot_and_mermaid_are_never_wrapped_and_keep_every_edge(tmp_path: Path,
                                                               write_pipeline: WritePipeline) -> None:
    long = "j_" + "x" * 200
    sources = [f"{long}_{i}" for i in range(30)]
    sinks = [f"{long}_sink_{i}" for i in range(20)]
    path = write_pipeline({"name": "p_" + "y" * 200, "jobs": [
        *({"name": n, "image": "sh"} for n in sources),
        *({"name": n, "image": "sh", "after": sources} for n in sinks),
    ]}, name="big.json")
    dot = graph(tmp_path, path, "--format", "dot").splitlines()
    assert dot[0] == f'digraph "p_{"y" * 200}" {{' and dot[-1] == "}"
    edges = [line for line in dot if "->" in line]
    assert len(edges) == 600
    assert all(re.fullmatch(r'  "j_x{200}_\d+" -> "j_x{200}_sink_\d+";', line) for line in edges)
    mermaid = graph(tmp_path, path, "-f", "mermaid").splitlines()
    assert mermaid[0] == "flowchart LR"
    assert sum(1 for line in mermaid if re.fullmatch(r"  j_x{200}_\d+ --> j_x{200}_sink_\d+", line)) == 600
    as_json = json.loads(graph(tmp_path, path, "-f", "json"))
    assert len(as_json["jobs"]) == 50 and len(as_json["jobs"][-1]["after"]) == 30


def validate(tmp_path: Path, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    return subprocess.run([sys.executable, "-m", "jobgraph", "validate", str(path), "--format", "json", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_validate_as_json_says_valid_with_what_the_file_holds(tmp_path: Path) -> None:
    result = validate(tmp_path, SEED / "pipeline.yaml")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["valid"] is True and document["pipeline"] == "root_task" and document["jobs"] == 6
    assert document["pools"] == ["PR_STD_POOL_S", "PR_STD_POOL_XS"]
    assert document["schedule"]["text"] == "59 MINUTE" and document["schedule"]["next_fire_at"].endswith("Z")
    assert not (tmp_path / ".jobgraph").exists()


def test_validate_as_json_lists_every_problem_with_its_job_and_field_and_exits_2(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [{"name": "a", "image": "sh", "retries": -1},
                                    {"name": "b", "image": "sh", "timeout": "soon"}]})
    result = validate(tmp_path, path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    document = json.loads(result.stdout)
    assert document["valid"] is False and document["file"] == str(path)
    by_job = {(e["job"], e["field"]): e for e in document["errors"]}
    assert set(by_job) == {("a", "retries"), ("b", "timeout")}
    assert all(e["file"] == str(path) and e["message"] for e in document["errors"])
    assert "'soon' is not a duration" in by_job[("b", "timeout")]["message"]
    path = write_pipeline({"jobs": [{"name": "a", "image": "sh", "after": ["nope"]}]})
    errors = json.loads(validate(tmp_path, path).stdout)["errors"]
    assert [(e["job"], e["field"]) for e in errors] == [("a", "after")] and "'nope'" in errors[0]["message"]


def test_graph_as_json_names_the_apis_fields_and_the_finalizer(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [{"name": "a", "image": "sh"}, {"name": "b", "image": "sh", "after": ["a"]}],
                           "finalizer": {"name": "tidy", "image": "sh"}})
    document = json.loads(graph(tmp_path, path, "--format", "json"))
    assert [(j["name"], j["after"], j["finalizer"]) for j in document["jobs"]] == [
        ("a", [], False), ("b", ["a"], False), ("tidy", [], True)]
    assert all({"runner", "pool", "image"} <= set(j) for j in document["jobs"])
    below = json.loads(graph(tmp_path, path, "--format", "json", "--dependents", "b"))
    assert [j["name"] for j in below["jobs"]] == ["b"]
