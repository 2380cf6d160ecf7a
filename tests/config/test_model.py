"""Fields of the pipeline model that guard what reaches a process: NUL bytes refused, log limits parsed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobgraph.config import load
from jobgraph.config.model import DEFAULT_LOG_LIMIT
from tests.conftest import Cli, WritePipeline, sh


@pytest.mark.parametrize(("document", "where"), [
    ({"jobs": [sh("a", "echo a\x00b")]}, "job 'a', field 'args.0'"),
    ({"jobs": [sh("a", "true", env={"GREETING": "hi\x00there"})]}, "job 'a', field 'env.GREETING'"),
    ({"images": {"sh": ["sh", "-c\x00"]}, "jobs": [sh("a", "true")]}, "field 'images.sh.1'"),
    ({"jobs": [sh("a", "true")], "finalizer": {"image": "sh", "args": ["\x00"]}}, "job 'finalizer', field 'args.0'"),
    ({"container_images": {"x": "img\x00"}, "jobs": [sh("a", "true")]}, "field 'container_images.x'"),
    ({"jobs": [sh("a", "true", workdir="/tmp\x00")]}, "job 'a', field 'workdir'"),
])
def test_a_nul_byte_is_refused_before_anything_runs(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, document: dict[str, Any], where: str) -> None:
    path = write_pipeline(document, name="pipeline.json")
    for command in ("validate", "run"):
        result = cli(command, str(path), check=2)
        assert f"{where}: contains a NUL byte" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stdout + result.stderr
    assert not (tmp_path / ".jobgraph" / "logs").exists()


def test_log_limit_takes_sizes_and_falls_back_to_defaults(write_pipeline: WritePipeline) -> None:
    pipeline = load(write_pipeline({"defaults": {"log_limit": "64k"},
                                    "jobs": [sh("a", "true"), sh("b", "true", log_limit="2g"),
                                             sh("c", "true", log_limit=5000)]}))
    assert [job.log_limit for job in pipeline.jobs] == [64 << 10, 2 << 30, 5000]
    assert load(write_pipeline({"jobs": [sh("a", "true")]})).jobs[0].log_limit == DEFAULT_LOG_LIMIT == 100 << 20
