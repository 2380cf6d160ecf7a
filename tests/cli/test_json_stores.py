"""The read commands' JSON is the same on SQLite and PostgreSQL: scripts must not care which store they read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Cli, WritePipeline


def _story(cli: Cli, write_pipeline: WritePipeline, url: str) -> dict[str, Any]:
    """A run where a job fails twice then is skipped past, as JSON from every read command, with run ids masked."""
    write_pipeline({"jobs": [
        {"name": "first", "image": "sh", "args": ["echo one; echo 42 > \"$JOBGRAPH_RETURN_VALUE_FILE\""]},
        {"name": "flaky", "image": "sh", "args": ["echo no >&2; exit 3"], "after": ["first"], "retries": 1},
        {"name": "later", "image": "sh", "args": ["true"], "after": ["flaky"]},
    ]})
    cli("run", "pipeline.yaml", "--store", url, check=1)
    history = json.loads(cli("history", "--store", url, "--format", "json", check=0).stdout)
    run_id = history["runs"][0]["run_id"]
    shown = json.loads(cli("show", run_id, "--store", url, "--format", "json", check=0).stdout)
    cli("deploy", "pipeline.yaml", "--store", url, check=0)
    pipelines = json.loads(cli("pipelines", "--store", url, "--format", "json", check=0).stdout)
    return _masked({"history": history, "show": shown, "pipelines": pipelines}, run_id)


def _masked(value: Any, run_id: str) -> Any:
    """Times, ids and the owning process differ between two runs; their presence and shape must not."""
    if isinstance(value, dict):
        return {key: ("<time>" if key.endswith(("_at", "_time")) and item else
                      "<process>" if key in ("owner", "cancel_requested_by") and item else
                      "<secs>" if key.endswith("secs") and item is not None else _masked(item, run_id))
                for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, run_id) for item in value]
    if isinstance(value, str):
        return value.replace(run_id, "<run>").replace(run_id[:8], "<run8>")
    return value


def _lines(document: Any) -> list[str]:
    """A document as lines, so a difference shows as the one line that differs."""
    return json.dumps(document, indent=1, sort_keys=True).splitlines()


def test_history_show_and_pipelines_give_the_same_json_on_both_stores(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, any_store_url: str) -> None:
    sqlite_side = tmp_path / "sqlite-side"
    sqlite_side.mkdir()
    local = f"sqlite:///{sqlite_side / 'store.db'}"
    expected = _story(cli, write_pipeline, local)
    got = _story(cli, write_pipeline, any_store_url)
    assert _lines(got) == _lines(expected)
    jobs = {job["name"]: job for job in got["show"]["jobs"]}
    assert (jobs["flaky"]["state"], jobs["flaky"]["attempts"], jobs["later"]["state"]) == ("FAILED", 2, "SKIPPED")
    assert jobs["first"]["return_value"] == "42"
    assert [a["exit_code"] for a in got["show"]["attempts"] if a["job"] == "flaky"] == [3, 3]
