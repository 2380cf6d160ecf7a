"""Factories shared by the tests: pipeline files in tmp_path, and the real `jobgraph` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "examples" / "seed"

WritePipeline = Callable[..., Path]
Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def write_pipeline(tmp_path: Path) -> WritePipeline:
    """Write a native pipeline (or any document) to tmp_path; shell jobs use the `sh` image by default."""

    def write(document: Any, name: str = "pipeline.yaml", with_sh: bool = True) -> Path:
        if with_sh and isinstance(document, dict):
            document = {"name": "p", "images": {"sh": ["sh", "-c"]}, **document}
        path = tmp_path / name
        if isinstance(document, str | bytes):
            path.write_bytes(document.encode() if isinstance(document, str) else document)
        elif name.endswith(".json"):
            path.write_text(json.dumps(document))
        else:
            path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return write


def sh(name: str, script: str, **fields: Any) -> dict[str, Any]:
    """A job that runs a shell script through the `sh` image."""
    return {"name": name, "image": "sh", "args": [script], **fields}


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run the real `jobgraph` command in tmp_path, with its own store and logs there."""

    def run(*args: str, check: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
        env.pop("JOBGRAPH_STORE", None)
        result = subprocess.run([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=timeout)
        if check is not None:
            assert result.returncode == check, result.stdout + result.stderr
        return result

    return run


def store_url(tmp_path: Path) -> str:
    """The store the `cli` fixture's commands write to."""
    return f"sqlite:///{tmp_path / '.jobgraph' / 'jobgraph.db'}"


def process_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (an exited process nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
