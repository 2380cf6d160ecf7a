"""The web benchmark's generated store records runs exactly as `jobgraph run` does (bench/web_data.py).

The same pipeline file runs once for real (local runner, `sh` jobs, one of them failing every
attempt) and once through the generator (the engine with the stand-in runner in virtual time, the
store's writer); both stores must hold the same rows: the same columns filled, the same states,
attempts, exit codes, snapshot, kinds of errors and log paths; only ids, owners and times differ.
"""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO, Cli, store_url

sys.path.insert(0, str(REPO / "bench"))

import web_data

from jobgraph.store import Store

FAILING = "t_myjob_3"


def seed_shape() -> web_data.Shape:
    """The generator's seed-shaped pipeline, with one job that fails each of its 3 attempts (for real too)."""
    shape = next(shape for shape in web_data.shapes() if shape.name == "root_task")
    jobs = [{**job, "args": [f"echo {FAILING} is broken; exit 1"]} if job["name"] == FAILING else job
            for job in shape.document["jobs"]]
    document = {**shape.document, "jobs": jobs, "defaults": {**shape.document["defaults"], "retry_delay": "0s"}}
    return web_data.Shape(shape.name, document, 1.0, fail_rate=0.0, doomed=frozenset({FAILING}))


def generated_store(folder: Path, shape: web_data.Shape) -> str:
    """A store with one run of `shape`, made the way bench/web_data.py makes each of its runs."""
    pipeline = web_data.write_pipelines(folder / "pipelines", [shape])[shape.name]
    loop = web_data.VirtualLoop()
    url = f"sqlite:///{folder / 'jobgraph.db'}"
    try:
        with Store(url) as store, web_data.virtual_engine(loop):
            store.record_all(web_data.run_once(loop, pipeline, shape, random.Random(1), folder / "logs", start=0.0,
                                               trigger="manual", version=None, logs=True))
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    return url


def rows(url: str, table: str, order: str) -> list[dict[str, Any]]:
    database = sqlite3.connect(url.removeprefix("sqlite:///"))
    database.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in database.execute(f"SELECT * FROM {table} ORDER BY {order}")]
    finally:
        database.close()


def comparable(row: dict[str, Any], run_id: str, log_root: Path) -> dict[str, Any]:
    """A row with what differs between any two runs (ids, owners, times) reduced to whether it is set."""
    varying = {"run_id", "id", "owner", "started_at", "finished_at", "created_date", "scheduled_time",
               "duration_secs"}
    same: dict[str, Any] = {}
    for key, value in row.items():
        if key in varying:
            same[key] = value is not None
        elif key == "log_path":
            same[key] = str(Path(value).relative_to(log_root / run_id))
        elif key == "return_value" and value is not None:
            same[key] = re.sub(r"\d+", "N", value)
        elif key in ("error", "error_message") and value is not None:
            same[key] = re.sub(r"(exit code 1\)?)(: |\n).+", r"\1 + the log's last line", value, flags=re.DOTALL)
        else:
            same[key] = value
    return same


def test_a_generated_run_is_recorded_as_a_real_run_of_the_same_pipeline(cli: Cli, tmp_path: Path) -> None:
    shape = seed_shape()
    real_file = web_data.write_pipeline(tmp_path, shape)
    cli("run", str(real_file), check=1)
    real = store_url(tmp_path)
    generated = generated_store(tmp_path / "generated", shape)

    (real_run,), (generated_run,) = rows(real, "runs", "run_id"), rows(generated, "runs", "run_id")
    assert real_run["state"] == generated_run["state"] == "FAILED"
    assert generated_run["snapshot"] == real_run["snapshot"]
    real_logs, generated_logs = tmp_path / ".jobgraph" / "logs", tmp_path / "generated" / "logs"
    for table, order in (("runs", "run_id"), ("task_runs", "task"), ("attempts", "task, attempt")):
        real_rows = [comparable(row, real_run["run_id"], real_logs) for row in rows(real, table, order)]
        generated_rows = [comparable(row, generated_run["run_id"], generated_logs)
                          for row in rows(generated, table, order)]
        assert generated_rows == real_rows, table
    failing = [row for row in rows(generated, "attempts", "attempt") if row["task"] == FAILING]
    assert [(row["attempt"], row["status"], row["exit_code"]) for row in failing] == [
        (1, "FAILED", 1), (2, "FAILED", 1), (3, "FAILED", 1)]
    assert all(Path(row["log_path"]).is_file() for row in rows(generated, "attempts", "id"))
