"""Partial runs (`run --only/--from/--until`) and targeted retries (`retry RUN --job J [--downstream]`, Airflow's
clear) through the real command: which jobs ran (a log file the jobs append to), which rows the store holds
for each graph run attempt, what `show` and `history` say, and that a bad name runs and records nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from jobgraph.store import Store
from tests.cli.test_run import retry_processes
from tests.conftest import Cli, WritePipeline, only_run, process_alive, sh, store_url


def seed_like(log: Path, fail: str | None = None, gate: Path | None = None) -> dict[str, Any]:
    """The seed's graph (1, 2 -> 3, 4; 1 -> 5; 3, 4, 5 -> 6) and a finalizer; each job appends its name to `log`.

    The job named `fail` exits 3 unless `gate` exists."""
    def job(name: str, *after: str) -> dict[str, Any]:
        script = f"echo {name} >> {log}"
        if name == fail:
            script += f"; [ -e {gate} ] || exit 3"
        return sh(name, script, after=list(after))

    return {"name": "seed", "jobs": [job("t1"), job("t2"), job("t3", "t2"), job("t4", "t2"), job("t5", "t1"),
                                     job("t6", "t3", "t4", "t5")],
            "finalizer": sh("stats", f'echo "stats $JOBGRAPH_TASK_STATES" >> {log}')}


def ran(log: Path) -> list[str]:
    """The jobs that ran, in order (the finalizer as `stats`)."""
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def rows(url: str, run_id: str) -> list[tuple[str, int, str, int]]:
    """Every task_runs row of a run (job, graph run attempt, state, attempts), oldest attempt first."""
    engine = create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT task, run_attempt, state, attempts FROM task_runs WHERE run_id = :r "
                                  "ORDER BY run_attempt, task"), {"r": run_id}).all()
        engine.dispose()
    return [(row[0], row[1], row[2], row[3]) for row in found]


def stored_selection(url: str, run_id: str) -> Any:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(text("SELECT selection FROM runs WHERE run_id = :r"), {"r": run_id}).scalar()
    engine.dispose()
    return None if value is None else json.loads(value)


def test_from_and_until_run_the_jobs_between_and_record_only_those(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    log = tmp_path / "log"
    write_pipeline(seed_like(log))
    out = cli("run", "pipeline.yaml", "--from", "t2", "--until", "t6", check=0).stdout
    assert "partial run: 4 of 6 jobs (t2, t3, t4, t6)" in out
    assert sorted(ran(log)) == ["stats", "t2", "t3", "t4", "t6"] and ran(log)[-1] == "stats"
    finalizer_saw = json.loads(log.read_text().splitlines()[-1].split(" ", 1)[1])
    assert finalizer_saw == {"t2": "SUCCEEDED", "t3": "SUCCEEDED", "t4": "SUCCEEDED", "t6": "SUCCEEDED"}
    url = store_url(tmp_path)
    run_id = only_run(url)
    assert rows(url, run_id) == [("stats", 1, "SUCCEEDED", 1), ("t2", 1, "SUCCEEDED", 1), ("t3", 1, "SUCCEEDED", 1),
                                 ("t4", 1, "SUCCEEDED", 1), ("t6", 1, "SUCCEEDED", 1)]
    assert stored_selection(url, run_id) == {"only": [], "from": ["t2"], "until": ["t6"],
                                             "jobs": ["t2", "t3", "t4", "t6"]}
    with Store(url) as records:
        assert records.run(run_id).state == "SUCCEEDED"
        assert {a.task for a in records.attempts(run_id)} == {"t2", "t3", "t4", "t6", "stats"}

    shown = cli("show", run_id, check=0).stdout
    assert "partial run (--from t2 --until t6): 4 jobs" in shown and "t1" not in shown
    detail = json.loads(cli("show", run_id, "--format", "json", check=0).stdout)
    assert detail["run"]["selection"]["jobs"] == ["t2", "t3", "t4", "t6"]
    assert sorted(job["name"] for job in detail["jobs"]) == ["stats", "t2", "t3", "t4", "t6"]
    listed = json.loads(cli("history", "--format", "json", check=0).stdout)["runs"]
    assert listed[0]["selection"]["from"] == ["t2"]
    assert "4 succeeded (partial)" not in cli("history", check=0).stdout  # the finalizer counts too
    assert "5 succeeded (partial)" in cli("history", check=0).stdout


def test_only_runs_a_job_at_once_without_its_predecessor(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    log = tmp_path / "log"
    document = seed_like(log)
    document["jobs"][5]["args"] = [f'echo "t6 ${{JOBGRAPH_PREDECESSOR_VALUES:-none}}" >> {log}']
    write_pipeline(document)
    cli("run", "pipeline.yaml", "--only", "t6", check=0)
    assert log.read_text().splitlines()[0] == "t6 none"
    assert ran(log) == ["t6", "stats"]
    url = store_url(tmp_path)
    assert rows(url, only_run(url)) == [("stats", 1, "SUCCEEDED", 1), ("t6", 1, "SUCCEEDED", 1)]


@pytest.mark.parametrize(("options", "message"), [
    (["--only", "t3,t33"], "pipeline.yaml, field '--only': no job named 't33' in pipeline seed (did you mean 't3'?)"),
    (["--from", "t1", "--until", "tt6"], "field '--until': no job named 'tt6' in pipeline seed (did you mean 't6'?)"),
    (["--only", "stats"], "field '--only': 'stats' is the finalizer: it always runs and is not chosen"),
    (["--from", "t3", "--until", "t5"], "field '--from/--until': --from t3 --until t5 picks no job of pipeline seed"),
    (["--only", " , "], "the command line, field '--only': names no job"),
    (["--from", ""], "the command line, field '--from': names no job"),
], ids=["unknown-only", "unknown-until", "finalizer", "empty", "blank-only", "blank-from"])
def test_a_bad_choice_is_exit_2_and_nothing_is_run_or_recorded(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, options: list[str], message: str) -> None:
    log = tmp_path / "log"
    write_pipeline(seed_like(log))
    result = cli("run", "pipeline.yaml", *options, check=2)
    assert message in result.stderr and "nothing was run." in result.stderr
    assert "Traceback" not in result.stderr
    assert not log.exists()
    assert not (tmp_path / ".jobgraph" / "jobgraph.db").exists()


def test_retry_job_downstream_reruns_a_succeeded_job_and_its_dependents_as_the_next_attempt(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, any_store_url: str) -> None:
    url, log = any_store_url, tmp_path / "log"
    write_pipeline(seed_like(log))
    cli("run", "pipeline.yaml", "--store", url, check=0)
    run_id = only_run(url)
    log.unlink()

    out = cli("retry", run_id[:8], "--job", "t3", "--downstream", "--store", url, check=0).stdout
    assert f"retrying run {run_id} of seed: running again t3, t6; keeping 5 jobs as they ended" in out
    assert ran(log) == ["t3", "t6", "stats"]
    assert rows(url, run_id) == [
        *((name, 1, "SUCCEEDED", 1) for name in ("stats", "t1", "t2", "t3", "t4", "t5", "t6")),
        ("stats", 2, "SUCCEEDED", 2), ("t3", 2, "SUCCEEDED", 2), ("t6", 2, "SUCCEEDED", 2)]
    with Store(url) as records:
        run = records.run(run_id)
        assert (run.state, run.run_attempt) == ("SUCCEEDED", 2)
        assert [(a.task, a.attempt, a.run_attempt) for a in records.attempts(run_id) if a.run_attempt == 2] == [
            ("t3", 2, 2), ("t6", 2, 2), ("stats", 2, 2)]
    assert stored_selection(url, run_id) == {"retries": [{"run_attempt": 2, "jobs": ["t3"], "downstream": True,
                                                          "rerun": ["t3", "t6"]}]}

    log.unlink()
    cli("retry", run_id, "--job", "T1", "--store", url, check=0)  # names are found in any case
    assert ran(log) == ["t1", "stats"]
    with Store(url) as records:
        assert {t.task: (t.attempts, t.run_attempt) for t in records.tasks(run_id)} == {
            "t1": (2, 3), "t2": (1, 1), "t3": (2, 2), "t4": (1, 1), "t5": (1, 1), "t6": (2, 2), "stats": (3, 3)}
    shown = cli("show", run_id, "--store", url, check=0).stdout
    assert "attempt 2 reran t3 and downstream (2 jobs); attempt 3 reran t1 (1 job)" in shown
    assert "(cleared)" in cli("history", "--store", url, check=0).stdout


def test_retry_job_keeps_every_other_job_as_it_ended_failures_too(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    write_pipeline(seed_like(log, fail="t2", gate=gate))
    cli("run", "pipeline.yaml", check=1)
    url = store_url(tmp_path)
    run_id = only_run(url)
    log.unlink()

    cli("retry", run_id, "--job", "t5", check=1)  # t5 ran again; t2 stays FAILED, what it blocked stays SKIPPED
    assert ran(log) == ["t5", "stats"]
    with Store(url) as records:
        assert {t.task: t.state for t in records.tasks(run_id)} == {
            "t1": "SUCCEEDED", "t2": "FAILED", "t3": "SKIPPED", "t4": "SKIPPED", "t5": "SUCCEEDED", "t6": "SKIPPED",
            "stats": "SUCCEEDED"}
        assert records.run(run_id).state == "FAILED"

    log.unlink()
    cli("retry", run_id, "--job", "t3", check=1)  # its predecessor t2 is kept FAILED: t3 is skipped, as it was
    assert ran(log) == ["stats"]
    with Store(url) as records:
        t3 = next(t for t in records.tasks(run_id) if t.task == "t3")
        assert (t3.state, t3.run_attempt) == ("SKIPPED", 3)
        assert "predecessor not succeeded: t2 FAILED" in (t3.error_message or "")

    gate.touch()
    log.unlink()
    cli("retry", run_id, "--job", "t2", "--downstream", check=0)
    assert sorted(ran(log)) == ["stats", "t2", "t3", "t4", "t6"]
    with Store(url) as records:
        assert records.run(run_id).run_attempt == 4
        assert {t.task: t.state for t in records.tasks(run_id)} == dict.fromkeys(
            ("t1", "t2", "t3", "t4", "t5", "t6", "stats"), "SUCCEEDED")


def test_a_retry_of_a_partial_run_keeps_to_its_jobs(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    write_pipeline(seed_like(log, fail="t3", gate=gate))
    cli("run", "pipeline.yaml", "--until", "t3", check=1)
    url = store_url(tmp_path)
    run_id = only_run(url)
    gate.touch()
    log.unlink()

    cli("retry", run_id, check=0)
    assert ran(log) == ["t3", "stats"]
    assert {task for task, *_ in rows(url, run_id)} == {"t2", "t3", "stats"}
    assert stored_selection(url, run_id)["jobs"] == ["t2", "t3"]

    refused = cli("retry", run_id, "--job", "t4,t9", check=2)
    assert f"field '--job': job 't4' is not part of run {run_id}: it ran only t2, t3" in refused.stderr
    assert "field '--job': no job named 't9' in pipeline seed\n" in refused.stderr
    assert "nothing was run." in refused.stderr and "Traceback" not in refused.stderr

    log.unlink()
    cli("retry", run_id, "--job", "t2", "--downstream", check=0)
    assert ran(log) == ["t2", "t3", "stats"]
    assert {task for task, *_ in rows(url, run_id)} == {"t2", "t3", "stats"}
    assert stored_selection(url, run_id) == {"only": [], "from": [], "until": ["t3"], "jobs": ["t2", "t3"],
                                             "retries": [{"run_attempt": 3, "jobs": ["t2"], "downstream": True,
                                                          "rerun": ["t2", "t3"]}]}


def test_a_bad_retry_changes_nothing(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    log = tmp_path / "log"
    write_pipeline(seed_like(log))
    cli("run", "pipeline.yaml", check=0)
    url = store_url(tmp_path)
    run_id = only_run(url)
    before = rows(url, run_id)
    log.unlink()

    for args, message in (
            (["--job", "t66"], "field '--job': no job named 't66' in pipeline seed (did you mean 't6'?)"),
            (["--job", "stats"], "'stats' is the finalizer: it always runs and is not chosen"),
            (["--downstream"], "--downstream goes with --job"),
            (["--job", ","], "the command line, field '--job': names no job")):
        refused = cli("retry", run_id, *args, check=2)
        assert message in refused.stderr and "nothing was run" in refused.stderr, refused.stderr
    assert "nothing to retry" in cli("retry", run_id, check=0).stdout  # a succeeded run, no --job: as before
    assert rows(url, run_id) == before and not log.exists()
    with Store(url) as records:
        assert (records.run(run_id).run_attempt, records.run(run_id).selection) == (1, None)


def test_four_targeted_retries_at_once_run_the_job_once(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, any_store_url: str) -> None:
    url, count, release = any_store_url, tmp_path / "count", tmp_path / "release"
    write_pipeline({"name": "seed", "jobs": [
        sh("first", "true"),
        sh("slow", f"echo ran >> {count}; [ -e {tmp_path / 'armed'} ] || exit 0; "
                   f"while [ ! -e {release} ]; do sleep 0.05; done", after=["first"]),
    ]})
    cli("run", "pipeline.yaml", "--store", url, check=0)
    run_id = only_run(url)
    (tmp_path / "armed").touch()

    results = retry_processes(tmp_path, run_id, url, 4, release, "--job", "slow")
    outputs = [r.stdout + r.stderr for r in results]
    assert sorted(r.returncode for r in results) == [0, 2, 2, 2], outputs
    for loser in (r for r in results if r.returncode == 2):
        assert f"run {run_id} is already being retried by " in loser.stderr or "was retried meanwhile" in loser.stderr
        assert "nothing was run" in loser.stderr and "Traceback" not in loser.stderr
    assert count.read_text().splitlines() == ["ran", "ran"]
    assert rows(url, run_id) == [("first", 1, "SUCCEEDED", 1), ("slow", 1, "SUCCEEDED", 1),
                                 ("slow", 2, "SUCCEEDED", 2)]
    assert stored_selection(url, run_id)["retries"] == [{"run_attempt": 2, "jobs": ["slow"], "downstream": False,
                                                         "rerun": ["slow"]}]


def test_a_partial_run_killed_9_is_retried_within_its_jobs(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    log, started, gate = tmp_path / "log", tmp_path / "started", tmp_path / "gate"
    document = seed_like(log)
    document["jobs"][2]["args"] = [f"touch {started}; while [ ! -e {gate} ]; do sleep 0.05; done; echo t3 >> {log}"]
    write_pipeline(document)
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    running = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", "pipeline.yaml", "--only", "t2,t3,t5"],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists()
    os.kill(running.pid, signal.SIGKILL)
    running.wait(timeout=30)
    assert not process_alive(running.pid)
    gate.touch()
    url = store_url(tmp_path)
    run_id = only_run(url)

    cli("retry", run_id, check=0)
    assert "t3" in ran(log) and not {"t1", "t4", "t6"} & set(ran(log))
    assert {task for task, *_ in rows(url, run_id)} == {"t2", "t3", "t5", "stats"}
    with Store(url) as records:
        assert {t.task: t.state for t in records.tasks(run_id)} == dict.fromkeys(("t2", "t3", "t5", "stats"),
                                                                                 "SUCCEEDED")


def test_a_cleared_job_gets_the_return_values_its_kept_predecessors_gave(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    log = tmp_path / "log"
    write_pipeline({"name": "values", "jobs": [
        sh("extract", "printf rows-42 > $JOBGRAPH_RETURN_VALUE_FILE"),
        sh("load", f'echo "load $JOBGRAPH_PREDECESSOR_VALUES" >> {log}', after=["extract"]),
    ]})
    cli("run", "pipeline.yaml", check=0)
    url = store_url(tmp_path)
    run_id = only_run(url)
    cli("retry", run_id, "--job", "load", check=0)
    assert log.read_text().splitlines() == ['load {"extract": "rows-42"}'] * 2
    assert rows(url, run_id) == [("extract", 1, "SUCCEEDED", 1), ("load", 1, "SUCCEEDED", 1),
                                 ("load", 2, "SUCCEEDED", 2)]


@pytest.mark.parametrize("options", [["--only", "each"], ["--from", "each"], ["--only", "EACH,other"]])
def test_a_choice_that_leaves_out_what_a_job_fans_out_over_is_exit_2(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, options: list[str]) -> None:
    log = tmp_path / "log"
    write_pipeline({"jobs": [
        sh("extract", f"echo extract >> {log}; printf '[1, 2]' > \"$JOBGRAPH_RETURN_VALUE_FILE\""),
        sh("each", f"echo each >> {log}", after=["extract"], for_each="{{ extract.return_value }}"),
        sh("other", f"echo other >> {log}")]})
    result = cli("run", "pipeline.yaml", *options, check=2)
    assert (f"field '{options[0]}': job 'each' fans out over the return value of 'extract', which this choice "
            "leaves out (add it, or use --until each)") in result.stderr
    assert "nothing was run." in result.stderr and "Traceback" not in result.stderr
    assert not log.exists() and not (tmp_path / ".jobgraph" / "jobgraph.db").exists()
    cli("run", "pipeline.yaml", "--until", "each", check=0)
    assert sorted(log.read_text().split()) == ["each", "each", "extract"]
