"""Retry rules through `jobgraph run` with real processes: retry_on / no_retry_on by exit code and by word,
retry_for, the defaults, and the reason a retry was not made in the job's error."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobgraph.engine.retry_rules import describe, matches, refusal
from jobgraph.runners.base import Cause, Outcome
from jobgraph.states import AttemptStatus
from tests.conftest import Cli, WritePipeline, sh


def rows(tmp_path: Path, job: str) -> tuple[list[tuple[Any, ...]], str | None]:
    """(attempt, status, exit code) of each attempt of `job`, and the job's recorded error."""
    with sqlite3.connect(tmp_path / ".jobgraph" / "jobgraph.db") as db:
        attempts = db.execute("SELECT attempt, status, exit_code FROM attempts WHERE task = ? ORDER BY attempt",
                              (job,)).fetchall()
        error = db.execute("SELECT error_message FROM task_runs WHERE task = ?", (job,)).fetchone()[0]
    return attempts, error


def counting(script: str, tmp_path: Path, name: str) -> str:
    """A script that appends a line to a file per attempt, then runs `script` with $n the attempt count."""
    return f'echo x >> {tmp_path}/{name}.count; n=$(wc -l < {tmp_path}/{name}.count); {script}'


def test_retry_on_exit_codes_retries_only_those(cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    jobs = [sh("flaky", counting('[ "$n" -ge 3 ] && exit 0; exit 75', tmp_path, "flaky"),
               retries=5, retry_on=[75, "timeout"]),
            sh("broken", counting("exit 2", tmp_path, "broken"), retries=5, retry_on=[75])]
    write_pipeline({"jobs": jobs})
    cli("run", "pipeline.yaml", check=1)
    attempts, error = rows(tmp_path, "flaky")
    assert attempts == [(1, "FAILED", 75), (2, "FAILED", 75), (3, "DONE", 0)] and error is None
    attempts, error = rows(tmp_path, "broken")
    assert attempts == [(1, "FAILED", 2)]
    assert error is not None and error.startswith(
        "attempt 1 FAILED, not retried: exit code 2 is not in retry_on [75]")


def test_no_retry_on_wins_and_comes_from_the_defaults(cli: Cli, write_pipeline: WritePipeline,
                                                      tmp_path: Path) -> None:
    jobs = [sh("config_error", counting("echo bad config >&2; exit 64", tmp_path, "config_error")),
            sh("overridden", counting("exit 64", tmp_path, "overridden"), no_retry_on=[], retries=1),
            sh("other", counting("exit 1", tmp_path, "other"))]
    write_pipeline({"defaults": {"retries": 3, "retry_on": [64, 1], "no_retry_on": [64]}, "jobs": jobs})
    cli("run", "pipeline.yaml", check=1)
    attempts, error = rows(tmp_path, "config_error")
    assert attempts == [(1, "FAILED", 64)]
    assert error is not None and "not retried: exit code 64 is in no_retry_on [64]" in error
    assert "bad config" in error  # the attempt's own error still follows
    assert rows(tmp_path, "overridden")[0] == [(1, "FAILED", 64), (2, "FAILED", 64)]
    assert rows(tmp_path, "other")[0] == [(i, "FAILED", 1) for i in range(1, 5)]


def test_timeout_and_error_words(cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    jobs = [sh("slow", counting("sleep 30", tmp_path, "slow"), timeout="300ms", retries=2, retry_on=["timeout"]),
            sh("slow_not", "sleep 30", timeout="300ms", retries=2, no_retry_on=["timeout"]),
            {"name": "missing", "image": "no-such-program", "retries": 2, "retry_on": [1]}]
    write_pipeline({"images": {"sh": ["sh", "-c"], "no-such-program": ["/nonexistent/program"]}, "jobs": jobs})
    cli("run", "pipeline.yaml", check=1)
    assert [a[1] for a in rows(tmp_path, "slow")[0]] == ["TIMEOUT"] * 3
    attempts, error = rows(tmp_path, "slow_not")
    assert [a[1] for a in attempts] == ["TIMEOUT"]
    assert error is not None and "not retried: timeout is in no_retry_on [timeout]" in error
    attempts, error = rows(tmp_path, "missing")
    assert [a[1] for a in attempts] == ["ERROR"]
    assert error is not None and "not retried: error is not in retry_on [1]" in error


def test_retry_for_caps_the_time_spent_retrying(cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    job = sh("flaky", counting("sleep 0.4; exit 1", tmp_path, "flaky"), retries=50, retry_delay="100ms",
             retry_for="1s")
    write_pipeline({"jobs": [job]})
    cli("run", "pipeline.yaml", check=1)
    attempts, error = rows(tmp_path, "flaky")
    assert 2 <= len(attempts) <= 3, attempts  # 0.5 s per attempt with its delay: the third would start past 1 s
    assert error is not None and "not retried: retry_for 1s would be passed (" in error
    assert ", 0.1s delay)" in error


@pytest.mark.parametrize(("field", "value", "message"), [
    ("retry_on", [0], "exit code 0 cannot fail an attempt"),
    ("retry_on", ["oops"], "'oops' is neither an exit code (1-255) nor one of timeout, error, oom, lost"),
    ("no_retry_on", [True], "expected an exit code"),
    ("retry_on", 3, "tuple"),
    ("retry_for", "soon", "is not a duration"),
    ("retry_for", 0, "greater than 0"),
])
def test_bad_rules_are_refused_naming_the_job_and_field(cli: Cli, write_pipeline: WritePipeline, tmp_path: Path,
                                                        field: str, value: Any, message: str) -> None:
    marker = tmp_path / "ran"
    write_pipeline({"jobs": [sh("first", f"touch {marker}"), sh("ruled", "true", **{field: value})]})
    result = cli("run", "pipeline.yaml", check=2)
    assert "pipeline.yaml" in result.stderr and "ruled" in result.stderr and field in result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_words_match_by_cause_and_status() -> None:
    oom = Outcome(AttemptStatus.FAILED, 137, "killed", cause=Cause.OOM)
    lost = Outcome(AttemptStatus.ERROR, None, "evicted", cause=Cause.LOST)
    error = Outcome(AttemptStatus.ERROR, None, "image not found")
    plain = Outcome(AttemptStatus.FAILED, 137, "killed by SIGKILL")
    assert matches("oom", oom) and matches(137, oom) and not matches("oom", plain)
    assert matches("lost", lost) and not matches("error", lost) and matches("error", error)
    assert not matches("lost", error) and not matches(137, lost)
    assert describe(oom) == "oom (exit code 137)" and describe(lost) == "lost" and describe(plain) == "exit code 137"


def test_refusal_order_counts_then_rules_then_time() -> None:
    from jobgraph.config.model import Job

    job = Job(name="j", image="i", retry_on=("oom", "lost"), no_retry_on=(137,), retry_for=10)
    oom = Outcome(AttemptStatus.FAILED, 137, cause=Cause.OOM)
    lost = Outcome(AttemptStatus.ERROR, cause=Cause.LOST)
    assert refusal(job, lost, 0, 0, 0) == "no retries left"
    assert refusal(job, oom, 1, 0, 0) == "oom (exit code 137) is in no_retry_on [137]"
    assert refusal(job, lost, 1, 9.5, 0) is None
    assert refusal(job, lost, 1, 9.5, 1) == "retry_for 10s would be passed (9.5s spent, 1s delay)"
