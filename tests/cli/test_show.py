"""What `history`, `show`, `stats`, `pipelines` and `logs` display: every time in UTC (and each display says
so), any size of log streamed, and a reader that leaves early."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path

import pytest

from jobgraph.store import Store
from tests.conftest import SEED, Cli, WritePipeline, peak_rss_mib, sh, store_url, with_peak_rss

LOG_BYTES = 1 << 30


def test_logs_of_a_1_gb_log_streams_in_flat_memory(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    cli("run", str(write_pipeline({"jobs": [sh("talks", "echo first line")]})), check=0)
    store = Store(store_url(tmp_path))
    run_id = store.runs(1)[0].run_id
    log = store.attempts(run_id, "talks")[0].log_path
    with log.open("ab") as file:  # sparse: a gigabyte of NULs that costs no disk
        file.truncate(LOG_BYTES)
        file.seek(0, os.SEEK_END)
        file.write(b"last line\n")
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    report = tmp_path / "peak-rss"
    process = subprocess.Popen(with_peak_rss([sys.executable, "-m", "jobgraph", "logs", run_id, "talks"], report),
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    received, start, end = 0, b"", b""
    while chunk := process.stdout.read(1 << 20):
        start = start or chunk[:200]
        received += len(chunk)
        end = (end + chunk)[-100:]
    assert process.wait(timeout=120) == 0
    header = b"# talks attempt 1: DONE (" + str(log).encode() + b")\n"
    assert start.startswith(header + b"first line\n\x00")
    assert end.endswith(b"\x00last line\n") and received == len(header) + LOG_BYTES + len(b"last line\n")
    assert peak_rss_mib(report) < 150, f"jobgraph logs peaked at {peak_rss_mib(report):.0f} MiB"


def test_logs_read_by_a_reader_that_leaves_early_ends_quietly(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    cli("run", str(write_pipeline({"jobs": [sh("talks", "seq 1 2000000")]})), check=0)
    run_id = Store(store_url(tmp_path)).runs(1)[0].run_id
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    started = time.monotonic()
    result = subprocess.run(f"{sys.executable} -m jobgraph logs {run_id} talks | head -2", shell=True, cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert result.stdout.splitlines()[1] == "1" and result.stderr == ""



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


def test_logs_of_a_misspelled_job_suggests_the_right_one(tmp_path: Path, cli: Cli,
                                                         write_pipeline: WritePipeline) -> None:
    cli("run", str(write_pipeline({"jobs": [sh("extract", "true")]})), check=0)
    run_id = Store(store_url(tmp_path)).runs(1)[0].run_id
    assert "(did you mean 'extract'?)" in cli("logs", run_id, "extrct", check=2).stderr


def test_history_and_show_as_json_give_the_apis_fields_for_the_seeds_failing_run(tmp_path: Path, cli: Cli) -> None:
    for name in ("jobconfig.json", "pipeline.yaml"):
        shutil.copy(SEED / name, tmp_path / name)
    cli("run", "pipeline.yaml", check=0)
    with sqlite3.connect(tmp_path / "results.db") as db:
        db.execute("""ALTER TABLE results_3 DROP COLUMN "'hello'" """)
    cli("run", "pipeline.yaml", check=1)
    store = Store(store_url(tmp_path))
    failed, succeeded = store.runs(2)

    listed = json.loads(cli("history", "--format", "json", check=0).stdout)
    assert [run["run_id"] for run in listed["runs"]] == [failed.run_id, succeeded.run_id]
    newest = listed["runs"][0]
    assert set(newest) == {"run_id", "pipeline", "state", "run_attempt", "started_at", "finished_at", "trigger",
                           "version", "selection", "job_counts"}
    assert newest["selection"] is None  # a whole run (tests/cli/test_partial.py has partial ones)
    assert (newest["pipeline"], newest["state"], newest["run_attempt"]) == ("root_task", "FAILED", 1)
    assert newest["job_counts"] == failed.task_counts == {"SUCCEEDED": 4, "FAILED": 1, "SKIPPED": 1}
    assert newest["started_at"] == failed.started_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    one = json.loads(cli("history", "--limit", "1", "-f", "json", check=0).stdout)
    assert [run["run_id"] for run in one["runs"]] == [failed.run_id]
    assert json.loads(cli("history", "--limit", "1", "-o", "json", check=0).stdout) == one  # as kubectl and argo

    shown = json.loads(cli("show", failed.run_id[:8], "--format", "json", check=0).stdout)
    assert set(shown) == {"run", "jobs", "attempts", "notifications"} and shown["run"]["run_id"] == failed.run_id
    assert shown["notifications"] == []  # the seed notifies nobody
    jobs = {job["name"]: job for job in shown["jobs"]}
    assert {name: job["state"] for name, job in jobs.items()} == {t.task: t.state for t in store.tasks(failed.run_id)}
    assert jobs["t_myjob_3"]["attempts"] == 3 and "no column named 'hello'" in jobs["t_myjob_3"]["error"]
    tried = [a for a in shown["attempts"] if a["job"] == "t_myjob_3"]
    stored = store.attempts(failed.run_id, "t_myjob_3")
    assert [(a["attempt"], a["status"], a["exit_code"], a["error"]) for a in tried] == [
        (a.attempt, "FAILED", 1, a.error) for a in stored]
    assert all("table results_3 has no column named 'hello'" in a["error"] for a in tried)
    assert jobs["t_myjob_6"]["state"] == "SKIPPED"
    store.close()


def test_an_unknown_format_is_refused_clearly(cli: Cli) -> None:
    for command in (["history"], ["show", "abc"], ["pipelines"]):
        result = cli(*command, "--format", "xml", check=2)
        assert "Invalid value for '--format'" in result.stderr and "'xml'" in result.stderr
        assert "table" in result.stderr and "json" in result.stderr
        assert result.stdout == "" and "Traceback" not in result.stderr
