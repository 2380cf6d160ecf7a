"""The container create body a job's spec becomes: its name, labels, environment, mounts and limits.

Split from runners/container.py so that the body is one pure function: `start` sends it and `describe`
(`jobgraph plan`) shows it, and the job's own out folder (never jobgraph's logs) is the only folder of
jobgraph's that is mounted.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

from jobgraph.runners.base import JobSpec
from jobgraph.runners.engine_api import LABEL

OUT_DIR = "/jobgraph/out"
"""Where the attempt's own out folder is mounted, so the job can write its return value."""

RETURN_FILE = "return"
"""The return-value file's name in the out folder."""


def create_options(spec: JobSpec, cwd: Path, owner: str) -> dict[str, Any]:
    """The create body of the container that runs `spec`: `describe` shows the very one `start` sends."""
    base = re.sub(r"[^a-z0-9]+", "-", (spec.container_name or spec.task).lower()).strip("-")[:40] or "job"
    name = f"jobgraph-{base}-{spec.run_id[:8]}-{spec.attempt}-{uuid.uuid4().hex[:6]}"
    environment = dict(spec.env)
    volumes = {str((cwd / host).resolve()): _bind(target) for host, target in spec.volumes.items()}
    out = out_folder(spec)
    if out is not None:  # a new, empty folder of its own (see ContainerRunner._start): nothing of jobgraph's is mounted
        volumes[str(out)] = {"bind": OUT_DIR, "mode": "rw"}
        environment["JOBGRAPH_RETURN_VALUE_FILE"] = f"{OUT_DIR}/{RETURN_FILE}"
    options: dict[str, Any] = {
        "command": list(spec.args) or None,
        "environment": environment,
        "name": name,
        "labels": {
            f"{LABEL}.run_id": spec.run_id, f"{LABEL}.task": spec.task, f"{LABEL}.attempt": str(spec.attempt),
            f"{LABEL}.pipeline": spec.pipeline, f"{LABEL}.owner": owner,
        },
        "working_dir": spec.workdir,
        "network_mode": spec.network,
        "volumes": volumes,
    }
    if spec.memory_bytes:
        options["mem_limit"] = spec.memory_bytes
    if spec.cpu:
        options["nano_cpus"] = int(min(spec.cpu, os.cpu_count() or 1) * 1e9)
    return options


def out_folder(spec: JobSpec) -> Path | None:
    """The attempt's out folder, beside where the engine reads its return value (`attempt-N.out`)."""
    return spec.return_value_path.with_suffix(".out") if spec.return_value_path is not None else None


def _bind(target: str) -> dict[str, str]:
    path, _, mode = target.partition(":")
    return {"bind": path, "mode": "ro" if mode == "ro" else "rw"}
