"""`for_each` as users meet it: validate refuses bad lists, run records each copy, show lists them, retry reruns
the copies that failed; on both ways of writing a store (SQLite's fast path, PostgreSQL through SQLAlchemy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from jobgraph.store import Store
from tests.conftest import Cli, WritePipeline, only_run, sh, store_url


def task_rows(url: str, run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Every task_runs row of a run, by (job, run attempt)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM task_runs WHERE run_id = :r"), {"r": run_id}).mappings().all()
    finally:
        engine.dispose()
    return {(row["task"], row["run_attempt"]): dict(row) for row in rows}


def test_bad_for_each_fields_are_refused_by_name_and_nothing_runs(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write_pipeline({"jobs": [
        sh("a", f"touch {marker}"),
        sh("not_after", "true", for_each="{{ a.return_value }}"),
        sh("not_a_list", "true", for_each="files"),
        sh("too_wide", "true", for_each=[1, 2, 3], max_fan_out=2),
        sh("no_item", "echo {{ item }}"),
        sh("stray_limit", "true", max_fan_out=5)]})
    result = cli("run", "pipeline.yaml", check=2)
    err = result.stderr
    assert "job 'not_after', field 'for_each': 'a' is not one of this job's predecessors" in err
    assert "job 'not_a_list', field 'for_each': 'files' is not a list" in err
    assert "job 'too_wide', field 'for_each': the list has 3 items, more than max_fan_out 2" in err
    assert "job 'no_item', field 'args': '{{ item }}' is only set in a job with for_each" in err
    assert "job 'stray_limit', field 'max_fan_out': max_fan_out applies only to a job with for_each" in err
    assert "Traceback" not in err and not marker.exists()
    write_pipeline({"jobs": [sh("wide", "true", for_each=[1], max_fan_out=10_001)]})
    assert "job 'wide', field 'max_fan_out': Input should be less than or equal to 10000" in cli(
        "validate", "pipeline.yaml", check=2).stderr
    with Store(store_url(tmp_path)) as records:
        assert records.runs() == []


def test_item_in_the_command_of_a_job_without_for_each_is_refused_by_validate_run_and_plan(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write_pipeline({"jobs": [sh("a", f"touch {marker}"),
                             {"name": "no_item", "command": ["echo", "{{ item }}"], "after": ["a"]}]})
    for command in ("validate", "run", "plan"):
        err = cli(command, "pipeline.yaml", check=2).stderr
        assert "job 'no_item', field 'command': '{{ item }}' is only set in a job with for_each" in err, command
        assert "Traceback" not in err
    assert not marker.exists()
    with Store(store_url(tmp_path)) as records:
        assert records.runs() == []


def test_copies_are_recorded_as_their_own_jobs_and_shown(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path, any_store_url: str) -> None:
    write_pipeline({"pools": {"two": {"max_parallel": 2}}, "jobs": [
        sh("extract", "printf '[\"jan\", \"feb\", {\"m\": 3}]' > \"$JOBGRAPH_RETURN_VALUE_FILE\""),
        sh("load", 'echo "loading $ITEM"; printf "%s" "$JOBGRAPH_TASK" > "$JOBGRAPH_RETURN_VALUE_FILE"',
           after=["extract"], for_each={"from": "extract"}, pool="two", env={"ITEM": "{{ item }}"}),
        sh("report", 'echo "$JOBGRAPH_PREDECESSOR_VALUES"', after=["load"])]})
    out = cli("run", "pipeline.yaml", "--store", any_store_url, check=0).stdout
    assert "load fans out: 3 copies" in out
    run_id = only_run(any_store_url)
    rows = task_rows(any_store_url, run_id)
    assert {task for task, _ in rows} == {"extract", "load", "load[0]", "load[1]", "load[2]", "report"}
    copies = {task: row for (task, _), row in rows.items() if row["item"] is not None}
    assert {task: json.loads(row["item"]) for task, row in copies.items()} == {
        "load[0]": "jan", "load[1]": "feb", "load[2]": {"m": 3}}
    assert all(row["state"] == "SUCCEEDED" and row["attempts"] == 1 and row["pool"] == "two"
               for row in copies.values())
    assert json.loads(rows[("load", 1)]["return_value"]) == ["load[0]", "load[1]", "load[2]"]
    with Store(any_store_url) as records:
        attempts = {a.task: a for a in records.attempts(run_id)}
    assert attempts["load[2]"].log_path.read_text() == 'loading {"m":3}\n'

    shown = json.loads(cli("show", run_id, "--store", any_store_url, "--format", "json", check=0).stdout)
    jobs = {job["name"]: job for job in shown["jobs"]}
    assert jobs["load[1]"]["copy_of"] == "load" and jobs["load[1]"]["item"] == "feb"
    assert jobs["load"]["copy_of"] is None and jobs["load"]["item"] is None
    assert jobs["load[2]"]["item"] == {"m": 3}
    table = cli("show", run_id, "--store", any_store_url, check=0).stdout
    assert table.index("│ load ") < table.index("│ load[0]") < table.index("│ load[1]") < table.index("│ report")
    log = cli("logs", run_id, "load[1]", "--store", any_store_url, check=0).stdout
    assert "loading feb" in log


def test_retry_reruns_the_failed_copies_only(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path, any_store_url: str) -> None:
    fixed, ran = tmp_path / "fixed", tmp_path / "ran"
    write_pipeline({"jobs": [
        sh("each", f'echo {{{{ item }}}} >> {ran}; [ {{{{ item }}}} != 2 ] || [ -e {fixed} ]',
           for_each=[1, 2, 3], retries=1),
        sh("after_all", "true", after=["each"])]})
    cli("run", "pipeline.yaml", "--store", any_store_url, check=1)
    run_id = only_run(any_store_url)
    rows = task_rows(any_store_url, run_id)
    assert rows[("each[1]", 1)]["state"] == "FAILED" and rows[("each[1]", 1)]["attempts"] == 2
    assert rows[("each", 1)]["error_message"] == "1 of 3 copies did not succeed: each[1] FAILED"
    assert rows[("after_all", 1)]["state"] == "SKIPPED"

    fixed.touch()
    ran.unlink()
    out = cli("retry", run_id, "--store", any_store_url, check=0).stdout
    assert "each fans out: 1 copy" in out
    assert ran.read_text().split() == ["2"]
    rows = task_rows(any_store_url, run_id)
    assert rows[("each[1]", 2)]["state"] == "SUCCEEDED" and rows[("each[1]", 2)]["attempts"] == 3
    assert ("each[0]", 2) not in rows and rows[("each[0]", 1)]["state"] == "SUCCEEDED"
    assert rows[("each", 2)]["state"] == "SUCCEEDED" and rows[("after_all", 2)]["state"] == "SUCCEEDED"
    with Store(any_store_url) as records:
        assert records.run(run_id).state == "SUCCEEDED"
        numbers = [(a.attempt, a.run_attempt) for a in records.attempts(run_id) if a.task == "each[1]"]
    assert numbers == [(1, 1), (2, 1), (3, 2)]


def test_a_list_that_is_not_a_list_fails_its_job_and_keeps_every_record(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    write_pipeline({"jobs": [
        sh("extract", "printf '{\"not\": \"a list\"}' > \"$JOBGRAPH_RETURN_VALUE_FILE\""),
        sh("load", "true", after=["extract"], for_each="{{ extract.return_value }}"),
        sh("next", "true", after=["load"]), sh("other", "true")]})
    result = cli("run", "pipeline.yaml", check=1)
    assert "Traceback" not in result.stderr
    url = store_url(tmp_path)
    rows = task_rows(url, only_run(url))
    assert rows[("load", 1)]["state"] == "FAILED"
    assert rows[("load", 1)]["error_message"] == "for_each: the return value of extract is a JSON object, not a list"
    assert rows[("next", 1)]["state"] == "SKIPPED" and rows[("other", 1)]["state"] == "SUCCEEDED"
    assert rows[("extract", 1)]["state"] == "SUCCEEDED"


def test_a_wide_fan_out_records_every_copy(cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    width = 400
    write_pipeline({"pools": {"p": {"max_parallel": 8}}, "jobs": [
        sh("extract", f"seq 0 {width - 1} | paste -sd, | sed 's/.*/[&]/' > \"$JOBGRAPH_RETURN_VALUE_FILE\""),
        {"name": "each", "image": "true", "after": ["extract"], "for_each": {"from": "extract"},
         "max_fan_out": width, "pool": "p"}], "images": {"sh": ["sh", "-c"], "true": ["true"]}})
    cli("run", "pipeline.yaml", check=0)
    url = store_url(tmp_path)
    rows = task_rows(url, only_run(url))
    copies = sorted(int(row["item"]) for row in rows.values() if row["item"] is not None)
    assert copies == list(range(width))
    assert all(row["state"] == "SUCCEEDED" for row in rows.values())


def test_graph_shows_what_a_job_fans_out_over(cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"jobs": [sh("extract", "true"), sh("load", "true", after=["extract"], for_each={"from": "extract"},
                                                       max_fan_out=50),
                             sh("months", "true", for_each=["jan", "feb"])]})
    document = json.loads(cli("graph", "pipeline.yaml", "--format", "json", check=0).stdout)
    jobs = {job["name"]: job for job in document["jobs"]}
    assert jobs["load"]["for_each"] == "{{ extract.return_value }}" and jobs["load"]["max_fan_out"] == 50
    assert jobs["months"]["for_each"] == ["jan", "feb"] and jobs["months"]["max_fan_out"] == 1000
    assert jobs["extract"]["for_each"] is None and jobs["extract"]["max_fan_out"] is None
    table = cli("graph", "pipeline.yaml", check=0).stdout
    assert "for each" in table and "extract.return_value" in table and "2 items" in table
    assert '"load" [label="load[…]", shape=box3d];' in cli("graph", "pipeline.yaml", "--format", "dot", check=0).stdout


def test_a_run_killed_mid_fan_out_is_resumed_by_retry_keeping_the_copies_that_ended(
        write_pipeline: WritePipeline, tmp_path: Path, cli: Cli) -> None:
    ran, gate = tmp_path / "ran", tmp_path / "gate"
    write_pipeline({"pools": {"one": {"max_parallel": 1}}, "jobs": [
        sh("each", f"echo {{{{ item }}}} >> {ran}; while [ {{{{ item }}}} = 2 ] && [ ! -e {gate} ]; do sleep 0.05; "
                   "done", for_each=[1, 2, 3], pool="one"),
        sh("after_all", f"echo after >> {ran}", after=["each"])]})
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", "pipeline.yaml"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while (not ran.exists() or ran.read_text().split() != ["1", "2"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()  # kill -9 while each[1] runs and each[2] waits for the pool
    process.wait()
    gate.touch()
    ran.unlink()
    url = store_url(tmp_path)
    run_id = only_run(url)
    cli("retry", run_id, check=0)
    assert ran.read_text().split() == ["2", "3", "after"]
    rows = task_rows(url, run_id)
    assert rows[("each[0]", 1)]["state"] == "SUCCEEDED" and ("each[0]", 2) not in rows
    assert rows[("each[1]", 2)]["attempts"] == 2 and rows[("each[2]", 2)]["state"] == "SUCCEEDED"
    assert rows[("each", 2)]["state"] == "SUCCEEDED"


def test_plan_shows_a_fanned_out_job_as_its_first_copy(cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"jobs": [
        sh("extract", "true"),
        sh("load", "echo {{ item }} {{ item.path }}", after=["extract"], for_each={"from": "extract"}),
        sh("months", "echo {{ item.name }}", for_each=[{"name": "jan"}, {"name": "feb"}])]})
    planned = json.loads(cli("plan", "pipeline.yaml", "--format", "json", check=0).stdout)
    argv = {job["job"]: job["argv"] for job in planned["jobs"]}
    assert argv["load"][-1] == "echo <item> <item.path>"
    assert argv["months"][-1] == "echo jan"


def test_retry_job_clears_a_fanned_out_job_and_every_copy_runs_again(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    write_pipeline({"jobs": [sh("each", f"echo {{{{ item }}}} >> {ran}", for_each=["a", "b"]),
                             sh("other", "true")]})
    cli("run", "pipeline.yaml", check=0)
    url = store_url(tmp_path)
    run_id = only_run(url)
    ran.unlink()
    cli("retry", run_id, "--job", "each", check=0)
    assert sorted(ran.read_text().split()) == ["a", "b"]
    rows = task_rows(url, run_id)
    assert rows[("each[0]", 2)]["attempts"] == 2 and rows[("each[1]", 2)]["state"] == "SUCCEEDED"
    assert ("other", 2) not in rows


def test_a_list_parameter_fans_out_over_the_values_given_on_the_command_line(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    write_pipeline({"params": [{"name": "regions", "type": "list", "default": ["emea"]}],
                    "jobs": [sh("each", "echo region {{ item }}", for_each="{{ params.regions }}")]})
    cli("run", "pipeline.yaml", "--param", "regions=apac,amer", check=0)
    url = store_url(tmp_path)
    rows = task_rows(url, only_run(url))
    assert {task: json.loads(row["item"]) for (task, _), row in rows.items() if row["item"]} == {
        "each[0]": "apac", "each[1]": "amer"}
    assert "region amer" in cli("logs", only_run(url), "each[1]", check=0).stdout
    cli("run", "pipeline.yaml", check=0)  # the default, one copy
    newest = json.loads(cli("history", "-o", "json", check=0).stdout)["runs"][0]["run_id"]
    assert {task: json.loads(row["item"]) for (task, _), row in task_rows(url, newest).items() if row["item"]} == {
        "each[0]": "emea"}


def test_a_return_value_nested_too_deep_fails_its_job_not_jobgraph(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    depth = 4_000  # 8 kB: under the 10 kB a return value keeps, far over what json.loads can nest
    write_pipeline({"jobs": [
        sh("extract", f"python3 -c \"import os; open(os.environ['JOBGRAPH_RETURN_VALUE_FILE'], 'w')"
                      f".write('[' * {depth} + ']' * {depth})\""),
        sh("load", "true", after=["extract"], for_each={"from": "extract"}),
        sh("next", "true", after=["load"]), sh("other", "true")]})
    result = cli("run", "pipeline.yaml", check=1)
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    url = store_url(tmp_path)
    run_id = only_run(url)
    rows = task_rows(url, run_id)
    assert rows[("load", 1)]["state"] == "FAILED"
    assert rows[("load", 1)]["error_message"].startswith(
        "for_each: the return value of extract is not JSON (nested too deep): '[[[[")
    assert rows[("next", 1)]["state"] == "SKIPPED" and rows[("other", 1)]["state"] == "SUCCEEDED"
    with Store(url) as records:
        assert records.run(run_id).state == "FAILED"


def test_a_return_value_with_text_no_store_or_argv_can_hold_fails_its_job_and_keeps_every_record(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    write_pipeline({"jobs": [
        sh("surrogate", "printf '[\"ok\", \"\\\\ud800\"]' > \"$JOBGRAPH_RETURN_VALUE_FILE\""),
        sh("nul", "printf '[{\"path\": \"a\\\\u0000b\"}]' > \"$JOBGRAPH_RETURN_VALUE_FILE\""),
        sh("load", "true", after=["surrogate"], for_each={"from": "surrogate"}),
        sh("copy", "echo {{ item.path }}", after=["nul"], for_each={"from": "nul"}),
        sh("other", "true")]})
    result = cli("run", "pipeline.yaml", check=1)
    assert "Traceback" not in result.stderr and "could not be written" not in result.stderr
    url = store_url(tmp_path)
    run_id = only_run(url)
    rows = task_rows(url, run_id)
    assert rows[("load", 1)]["state"] == "FAILED"
    assert rows[("load", 1)]["error_message"] == (
        "for_each: item 1 of the return value of surrogate is text that is not valid Unicode (a lone surrogate)")
    assert rows[("copy", 1)]["state"] == "FAILED"
    assert rows[("copy", 1)]["error_message"] == (
        "for_each: item 0 of the return value of nul holds a NUL character, which no argument or variable can")
    assert not any("[" in task for task, _ in rows)
    assert rows[("other", 1)]["state"] == "SUCCEEDED"
    with Store(url) as records:
        assert records.run(run_id).state == "FAILED"


def test_an_item_with_a_backslash_u0000_as_plain_text_is_not_a_nul(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    write_pipeline({"jobs": [
        sh("extract", "printf '[\"a\\\\\\\\u0000b\"]' > \"$JOBGRAPH_RETURN_VALUE_FILE\""),
        sh("load", "printf %s \"$ITEM\" > \"$JOBGRAPH_RETURN_VALUE_FILE\"", after=["extract"],
           for_each={"from": "extract"}, env={"ITEM": "{{ item }}"})]})
    cli("run", "pipeline.yaml", check=0)
    url = store_url(tmp_path)
    rows = task_rows(url, only_run(url))
    assert rows[("load[0]", 1)]["return_value"] == "a\\u0000b"


def test_a_return_value_cut_at_10_kb_fails_its_fan_out_saying_so(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    write_pipeline({"jobs": [
        sh("extract", "python3 -c \"import os, json; open(os.environ['JOBGRAPH_RETURN_VALUE_FILE'], 'w')"
                      ".write(json.dumps(list(range(5000))))\""),
        sh("load", "true", after=["extract"], for_each={"from": "extract"}, max_fan_out=10_000)]})
    cli("run", "pipeline.yaml", check=1)
    url = store_url(tmp_path)
    rows = task_rows(url, only_run(url))
    assert len(rows[("extract", 1)]["return_value"]) == 10_000
    assert rows[("load", 1)]["state"] == "FAILED"
    assert rows[("load", 1)]["error_message"].startswith(
        "for_each: the return value of extract was cut at 10,000 bytes, the most a return value keeps, so it is not "
        "JSON (write a shorter list, or the items to a file and its path as the return value): '[0, 1, 2,")


def test_a_literal_item_holding_a_nul_is_refused_by_validate(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    write_pipeline({"jobs": [sh("each", "true", for_each=["ok", {"k": "a\x00b"}])]})
    err = cli("run", "pipeline.yaml", check=2).stderr
    assert "job 'each', field 'for_each': item 1 holds a NUL character, which no argument or variable can" in err
    assert "Traceback" not in err and not (tmp_path / ".jobgraph" / "jobgraph.db").exists()
