"""The `jobgraph` command end to end, as a user runs it: the seed's story, cancel, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jobgraph.store import Store
from tests.conftest import SEED, Cli, WritePipeline, process_alive, sh, store_url


def start_run(tmp_path: Path, path: Path, pids: Path, expected: int = 2) -> subprocess.Popen[str]:
    """Start `jobgraph run` in the background; return once its jobs wrote `expected` pids to `pids`."""
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while (not pids.exists() or len(pids.read_text().split()) < expected) and time.monotonic() < deadline:
        time.sleep(0.05)
    return process


def copy_seed(tmp_path: Path) -> None:
    for name in ("jobconfig.json", "pipeline.yaml"):
        shutil.copy(SEED / name, tmp_path / name)


def results(tmp_path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(tmp_path / "results.db") as db:
        return db.execute(f'select * from "{table}"').fetchall()


def test_the_seed_pipeline_runs_and_fills_the_seed_tables(tmp_path: Path, cli: Cli) -> None:
    copy_seed(tmp_path)
    run = cli("run", "pipeline.yaml", check=0)
    assert "t_myjob_6 SUCCEEDED attempt 1" in run.stdout
    assert run.stdout.index("t_myjob_3 RUNNING") > run.stdout.index("t_myjob_2 SUCCEEDED")
    for i in range(1, 7):
        rows = results(tmp_path, f"results_{i}")
        assert len(rows) == 1 and rows[0][1] == "hello"
    jobs = cli("stats", "jobs_run_stats", check=0).stdout
    assert jobs.count(" DONE ") == 6 and "root_task" in jobs
    tasks = cli("stats", "task_logging_stats", check=0).stdout
    assert tasks.count(" SUCCEEDED ") == 6


def test_the_seed_failure_story_then_retry(tmp_path: Path, cli: Cli) -> None:
    copy_seed(tmp_path)
    cli("run", "pipeline.yaml", check=0)
    with sqlite3.connect(tmp_path / "results.db") as db:
        db.execute("""ALTER TABLE results_3 DROP COLUMN "'hello'" """)
        db.execute("ALTER TABLE results_3 ADD COLUMN createdate DATETIME")
    failed = cli("run", "pipeline.yaml", check=1)
    assert "t_myjob_6 SKIPPED: predecessor not succeeded: t_myjob_3 FAILED" in failed.stdout

    store = Store(store_url(tmp_path))
    run = store.runs(1)[0]
    attempts = [a for a in store.attempts(run.run_id) if a.task == "t_myjob_3"]
    assert [(a.attempt, a.status, a.exit_code) for a in attempts] == [(n, "FAILED", 1) for n in (1, 2, 3)]
    assert all("table results_3 has no column named 'hello'" in (a.error or "") for a in attempts)
    tasks = {t.task: t for t in store.tasks(run.run_id)}
    assert tasks["t_myjob_6"].state == "SKIPPED" and tasks["t_myjob_4"].state == "SUCCEEDED"

    shown = cli("show", run.run_id[:8], check=0).stdout
    assert shown.count("table results_3 has no column named 'hello'") >= 3
    log = cli("logs", run.run_id, "T_MYJOB_3", "--attempt", "2", check=0).stdout
    assert "attempt 2: FAILED" in log and "no column named 'hello'" in log

    with sqlite3.connect(tmp_path / "results.db") as db:
        db.execute("""ALTER TABLE results_3 ADD COLUMN "'hello'" """)
        db.execute("ALTER TABLE results_3 DROP COLUMN createdate")
    retried = cli("retry", run.run_id, check=0)
    assert "keeping 4 succeeded jobs" in retried.stdout
    assert "t_myjob_3 SUCCEEDED attempt 4" in retried.stdout and "t_myjob_1 RUNNING" not in retried.stdout
    tasks = {t.task: t for t in store.tasks(run.run_id)}
    assert all(t.state == "SUCCEEDED" for t in tasks.values())
    assert store.run(run.run_id).run_attempt == 2 and store.run(run.run_id).state == "SUCCEEDED"
    assert len(results(tmp_path, "results_1")) == 2 and len(results(tmp_path, "results_6")) == 2
    assert "(after 1 retry)" in cli("show", run.run_id, check=0).stdout
    assert "nothing to retry" in cli("retry", run.run_id, check=0).stdout
    assert run.run_id in cli("history", check=0).stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cancel_kills_every_job_records_it_and_exits_130(
        tmp_path: Path, write_pipeline: WritePipeline, sig: signal.Signals) -> None:
    pids = tmp_path / "pids"
    path = write_pipeline({
        "jobs": [sh("slow1", f"sleep 300 & echo $! >> {pids}; wait"), sh("slow2", f"echo $$ >> {pids}; sleep 300"),
                 sh("later", "true", after=["slow1"])],
        "finalizer": {"image": "sh", "args": [f"echo done > {tmp_path / 'final'}"]},
    })
    process = start_run(tmp_path, path, pids)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    for pid in map(int, pids.read_text().split()):
        assert not process_alive(pid), f"job process {pid} was left behind"
    assert (tmp_path / "final").read_text() == "done\n"
    store = Store(store_url(tmp_path))
    run = store.runs(1)[0]
    assert run.state == "CANCELLED"
    states = {t.task: t.state for t in store.tasks(run.run_id)}
    assert states == {"slow1": "CANCELLED", "slow2": "CANCELLED", "later": "CANCELLED", "finalizer": "SUCCEEDED"}
    assert {a.status for a in store.attempts(run.run_id) if a.task.startswith("slow")} == {"CANCELLED"}


BAD_INPUTS = {
    "empty.json": ("", "the file is empty"),
    "broken.json": ("[{", "broken.json:1:3: invalid JSON"),
    "binary.json": (b"\xff\xfe[]", "is not UTF-8 text"),
    "dup.json": (json.dumps([{"task_name": "a", "image_name": "i", "after_task_name": "root_task"},
                             {"task_name": "A", "image_name": "i", "after_task_name": "root_task"}]),
                 "job 'A', field 'name': duplicate name"),
    "inject.json": (json.dumps([{"task_name": "a'; drop table runs; --", "image_name": "i",
                                 "after_task_name": "root_task"}]), "field 'task_name'"),
    "cycle.yaml": (yaml.safe_dump({"name": "p", "images": {"i": ["true"]}, "jobs": [
        {"name": "a", "image": "i", "after": ["b"]}, {"name": "b", "image": "i", "after": ["a"]}]}),
        "the jobs form a cycle: "),
    "retries.yaml": (yaml.safe_dump({"name": "p", "images": {"i": ["true"]}, "jobs": [
        {"name": "a", "image": "i", "retries": 1000}]}), "job 'a', field 'retries'"),
    "timeout0.yaml": (yaml.safe_dump({"name": "p", "images": {"i": ["true"]}, "defaults": {"timeout": 0},
                                      "jobs": [{"name": "a", "image": "i"}]}), "field 'defaults.timeout'"),
    "typo_after.yaml": (yaml.safe_dump({"name": "p", "images": {"i": ["true"]}, "jobs": [
        {"name": "extract", "image": "i"}, {"name": "load", "image": "i", "after": ["extrct"]}]}),
        "job 'load', field 'after': unknown predecessor 'extrct' (did you mean 'extract'?)"),
    "zero.yaml": ("name: p\njobs_from: /dev/zero\n", "/dev/zero: is not a regular file"),
    "fifo.yaml": ("name: p\njobs_from: a.fifo\n", "a.fifo: is not a regular file"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_input_exits_2_with_a_message_and_runs_nothing(tmp_path: Path, cli: Cli, name: str, command: str) -> None:
    content, expected = BAD_INPUTS[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    os.mkfifo(tmp_path / "a.fifo")
    result = cli(command, name, check=2, timeout=10)
    assert expected in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert "nothing was run" in result.stderr
    assert not (tmp_path / ".jobgraph").exists()


def test_validate_and_graph_of_the_seed(tmp_path: Path, cli: Cli) -> None:
    copy_seed(tmp_path)
    assert "ok: pipeline 'root_task', 6 jobs in 2 pools" in cli("validate", "pipeline.yaml", check=0).stdout
    table = cli("graph", "pipeline.yaml", check=0).stdout
    assert "t_myjob_3, t_myjob_4, t_myjob_5" in table and "PR_STD_POOL_XS" in table
    dot = cli("graph", "pipeline.yaml", "--format", "dot", check=0).stdout
    assert '"t_myjob_2" -> "t_myjob_3";' in dot
    assert "t_myjob_5 --> t_myjob_6" in cli("graph", "pipeline.yaml", "-f", "mermaid", check=0).stdout
    as_json = json.loads(cli("graph", "pipeline.yaml", "-f", "json", check=0).stdout)
    assert {j["name"]: j["level"] for j in as_json["jobs"]}["t_myjob_6"] == 2
    dependents = json.loads(cli("graph", "pipeline.yaml", "-f", "json", "--dependents", "T_MYJOB_2", check=0).stdout)
    assert [j["name"] for j in dependents["jobs"]] == ["t_myjob_2", "t_myjob_3", "t_myjob_4", "t_myjob_6"]
    assert "no job named 'nope'" in cli("graph", "pipeline.yaml", "--dependents", "nope", check=2).stderr


def test_the_bare_seed_file_needs_an_image_mapping_for_the_local_runner(tmp_path: Path, cli: Cli) -> None:
    copy_seed(tmp_path)
    result = cli("run", "jobconfig.json", check=2)
    assert "job 't_myjob_1', field 'image': image '/tutorial_db/" in result.stderr
    assert "also used by t_myjob_2" in result.stderr


def test_an_unmapped_image_of_thousands_of_jobs_names_a_few_and_counts_the_rest(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"jobs": [{"name": f"j{i}", "image": "img"} for i in range(3000)]})
    err = cli("validate", "pipeline.yaml", check=2).stderr.replace("\n", "")  # rich wraps after a space
    assert "job 'j0', field 'image': image 'img' has no command in 'images'" in err
    assert "(also used by j1, j2, j3, j4, j5, j6, j7, j8, j9, j10 and 2,989 more jobs)" in err
    assert "j11" not in err and len(err) < 1000


def test_schema_is_json_schema(cli: Cli) -> None:
    schema = json.loads(cli("schema", check=0).stdout)
    assert schema["title"] == "Pipeline" and "jobs" in schema["required"]
    assert "retries" in schema["$defs"]["Job"]["properties"]


def test_unknown_run_and_job_are_clear_errors(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"jobs": [sh("a", "echo hi")]})
    cli("run", "pipeline.yaml", check=0)
    assert "no run with id 'zzz'" in cli("show", "zzz", check=2).stderr
    run_id = Store(store_url(tmp_path)).runs(1)[0].run_id
    assert "has no attempt of a job named 'b'" in cli("logs", run_id, "b", check=2).stderr
    assert "hi" in cli("logs", run_id, "a", check=0).stdout


def test_a_second_ctrl_c_does_not_stop_the_kill_of_a_job_that_ignores_sigterm(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    pids = tmp_path / "pids"
    path = write_pipeline({"jobs": [sh("stubborn", f"trap '' TERM; echo $$ >> {pids}; sleep 300 & "
                                               f"echo $! >> {pids}; wait")]})
    process = start_run(tmp_path, path, pids)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    for pid in map(int, pids.read_text().split()):
        assert not process_alive(pid), f"job process {pid} was left behind"


def test_secrets_never_reach_the_store_even_from_jobs_that_did_not_ask(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PASSWORD", "hunter2-secret")
    write_pipeline({"jobs": [
        sh("owner", 'printf "$DB_PASSWORD" > "$JOBGRAPH_RETURN_VALUE_FILE"', secrets=["DB_PASSWORD"]),
        sh("snoop", 'echo "seen: ${DB_PASSWORD:-nothing}"; echo "$JOBGRAPH_PREDECESSOR_VALUES"; exit 1',
           after=["owner"]),
    ]})
    cli("run", "pipeline.yaml", check=1)
    database = (tmp_path / ".jobgraph" / "jobgraph.db").read_bytes()
    assert b"hunter2" not in database
    store = Store(store_url(tmp_path))
    run = store.runs(1)[0]
    snoop = next(a for a in store.attempts(run.run_id) if a.task == "snoop")
    assert "seen: nothing" in (snoop.error or "") and '{"owner": "***"}' in (snoop.error or "")
    files = [p for p in (tmp_path / ".jobgraph" / "logs").rglob("*") if p.is_file()]
    assert files and all(b"hunter2" not in p.read_bytes() for p in files)


def test_a_missing_secret_stops_the_run_before_anything_runs(tmp_path: Path, cli: Cli,
                                                             write_pipeline: WritePipeline) -> None:
    write_pipeline({"jobs": [sh("needs", "true", secrets=["NOT_SET_ANYWHERE"])]})
    result = cli("run", "pipeline.yaml", check=2)
    assert "job 'needs', field 'secrets': secret NOT_SET_ANYWHERE is not set" in result.stderr


def test_markup_like_text_in_the_file_is_shown_as_is(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"images": {"img[/]": ["true"], "sh": ["sh", "-c"]}, "jobs": [{"name": "a", "image": "img[/]"}]})
    assert "img[/]" in cli("graph", "pipeline.yaml", check=0).stdout


def test_deeply_nested_json_is_a_clear_error(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "deep.json").write_text("[" * 100_000)
    result = cli("validate", "deep.json", check=2)
    assert "deep.json" in result.stderr and "Traceback" not in result.stderr


def test_kill_9_of_jobgraph_is_recovered_on_the_next_start_and_retry_resumes(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    pids, gate = tmp_path / "pids", tmp_path / "gate"
    path = write_pipeline({"jobs": [
        sh("quick", "echo done"),
        sh("slow", f"echo $$ >> {pids}; sleep 300 & echo $! >> {pids}; "
                   f"if [ -e {gate} ]; then exit 0; fi; wait", after=["quick"]),
        sh("last", "true", after=["slow"]),
    ]})
    process = start_run(tmp_path, path, pids)
    process.kill()
    process.communicate()
    left = [int(p) for p in pids.read_text().split()]
    assert any(process_alive(pid) for pid in left), "the jobs should outlive a kill -9 until the next start"
    store = Store(store_url(tmp_path))
    run_id = store.runs(1)[0].run_id
    assert store.run(run_id).state == "RUNNING"

    gate.touch()
    retried = cli("retry", run_id, check=0)
    assert f"run {run_id} of p: its jobgraph process died; killed 2 leftover process(es)" in retried.stderr
    assert all(not process_alive(pid) for pid in left)
    lost = next(a for a in store.attempts(run_id) if a.task == "slow")
    assert lost.status == "CANCELLED" and (lost.error or "").startswith("orchestrator lost")
    assert {t.task: (t.state, t.attempts) for t in store.tasks(run_id)} == {
        "quick": ("SUCCEEDED", 1), "slow": ("SUCCEEDED", 2), "last": ("SUCCEEDED", 1)}
    assert "quick RUNNING" not in retried.stdout


def test_an_argument_that_is_not_utf_8_exits_2_with_no_traceback(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "p", "jobs": [sh("a", "true")]})
    cli("run", "pipeline.yaml", check=0)
    before = sorted(os.listdir(tmp_path))
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    for args in ([b"show", b"\xff"], [b"logs", b"\xff", b"a"], [b"history", b"--pipeline", b"p\xff"],
                 [b"trigger", b"\xff"], [b"drop", b"\xff"], [b"init", b"new\xff.yaml"], [b"cancel", b"\xff"]):
        result = subprocess.run([os.fsencode(sys.executable), b"-m", b"jobgraph", *args], cwd=tmp_path, env=env,
                                capture_output=True, timeout=60)
        stderr = result.stderr.decode("utf-8", "replace")
        assert result.returncode == 2, (args, stderr)
        assert "Traceback" not in stderr and "is not UTF-8 text" in stderr, (args, stderr)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize(("args", "says", "never"), [
    (["run"], "recorded with the run, so never a secret", "fixed in the script"),
    (["plan"], "filled into the plan as a run would get it", "recorded with the run"),
    (["export", "snowflake"], "fixed in the script (a task graph has no run parameters), so never a secret",
     "recorded with the run"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else "")
def test_each_commands_help_says_what_its_options_do_there(
        cli: Cli, args: list[str], says: str, never: str) -> None:
    text = " ".join(cli(*args, "--help", check=0).stdout.split())
    assert says in text and never not in text
    if args != ["export", "snowflake"]:
        assert "Run every job with this runner: local, podman, docker, slurm, kubernetes or spcs" in text


def test_validate_counts_one_job_in_one_pool_in_the_singular(cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"jobs": [sh("only", "true")]})
    assert "ok: pipeline 'p', 1 job in 1 pool (default)" in cli("validate", "pipeline.yaml", check=0).stdout
