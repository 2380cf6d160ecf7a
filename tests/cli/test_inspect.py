"""validate and graph as a user meets them: machine-readable output stays machine-readable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import WritePipeline


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
