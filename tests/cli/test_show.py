"""What `history`, `show`, `stats` and `pipelines` display: every time in UTC, and each display says so."""

from __future__ import annotations

from datetime import UTC

import pytest

from jobgraph.store import Store
from tests.conftest import Cli, WritePipeline, sh, store_url


def test_displays_show_utc_and_say_so(tmp_path, cli: Cli, write_pipeline: WritePipeline,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a local time would show another date
    path = write_pipeline({"jobs": [sh("a", "true"), sh("b", "echo broken >&2; exit 3", retries=1)]})
    cli("run", str(path), check=1)
    store = Store(store_url(tmp_path))
    run = store.runs(1)[0]
    started = {t.task: t.started_at for t in store.tasks(run.run_id)}
    store.close()

    def utc(moment: object) -> str:
        assert moment is not None
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")  # type: ignore[attr-defined]

    history = cli("history", check=0).stdout
    assert "started (UTC)" in history and utc(run.started_at) in history
    assert "1 failed, 1 succeeded" in history
    shown = cli("show", run.run_id, check=0).stdout
    assert shown.count("started (UTC)") == 2 and utc(started["b"]) in shown
    assert "run attempt" in shown
    jobs = cli("stats", "jobs_run_stats", check=0).stdout
    assert "graph_start_time (UTC)" in jobs and "created_date (UTC)" in jobs and utc(run.started_at) in jobs
    tasks = cli("stats", "task_logging_stats", check=0).stdout
    assert "query_start_time (UTC)" in tasks and utc(started["a"]).replace("-", "").replace(" ", "").replace(
        ":", "") in tasks
    tries = cli("stats", "job_attempts", check=0).stdout
    assert "start_time (UTC)" in tries and tries.count(" FAILED ") == 2
    cli("deploy", str(path), check=0)
    listed = cli("pipelines", check=0).stdout
    assert "last run (UTC)" in listed and utc(run.started_at) in listed
    assert "no view named 'runs'" in cli("stats", "runs", check=2).stderr
