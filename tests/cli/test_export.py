"""`jobgraph export snowflake`: the seed's task graph as golden SQL, -o and --teardown, and bad input refused (exit 2).

The golden files are what the command prints for the seed's own files (examples/seed); a change to the export
shows up as a diff of them. Regenerate with JOBGRAPH_UPDATE_GOLDEN=1 after reading the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_imports import EVERYTHING_BUT_THE_COMMAND_LINE, STORE_AND_ENGINES, WEB, among, loaded_modules
from tests.conftest import SEED, WritePipeline

GOLDEN = Path(__file__).parents[1] / "export" / "golden"


def export(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(cwd / ".jobgraph-home-unused"), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "jobgraph", "export", "snowflake", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("source", "golden"), [("jobconfig.json", "jobconfig.sql"),
                                                ("pipeline.yaml", "pipeline.sql")])
def test_the_seeds_files_export_to_the_golden_sql(source: str, golden: str) -> None:
    result = export(SEED, source)
    assert result.returncode == 0, result.stderr
    if os.environ.get("JOBGRAPH_UPDATE_GOLDEN"):
        (GOLDEN / golden).write_text(result.stdout)
    assert result.stdout == (GOLDEN / golden).read_text()
    assert result.stderr.splitlines()[0].startswith("warning: per-job retry counts (0, 1, 2) cannot be expressed")
    assert not (SEED / ".jobgraph-home-unused").exists()


def test_output_file_and_teardown(tmp_path: Path) -> None:
    out = tmp_path / "graph.sql"
    result = export(SEED, "pipeline.yaml", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and out.read_text() == (GOLDEN / "pipeline.sql").read_text()
    assert f"wrote {out}" in result.stderr and "warning: retry delay and backoff" in result.stderr
    teardown = export(SEED, "jobconfig.json", "--teardown")
    assert teardown.returncode == 0, teardown.stderr
    lines = [line for line in teardown.stdout.splitlines() if line and not line.startswith("--")]
    assert lines[0] == 'ALTER TASK IF EXISTS "ROOT_TASK" SUSPEND;' and lines[-1] == 'DROP TASK IF EXISTS "ROOT_TASK";'
    assert 'DROP TASK IF EXISTS "GET_GRAPH_STATS";' in lines and len(lines) == 9
    assert "CREATE" not in teardown.stdout


def test_the_output_replaces_a_link_and_never_writes_through_it(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "graph.sql"
    link.symlink_to(target)
    result = export(SEED, "jobconfig.json", "-o", str(link))
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "keep me" and not link.is_symlink()
    assert link.read_text().startswith("-- jobgraph export snowflake jobconfig.json")


def test_a_hostile_task_name_is_refused_at_load_naming_file_job_and_field(tmp_path: Path) -> None:
    jobs = json.loads((SEED / "jobconfig.json").read_text())
    jobs[2]["task_name"] = 't_myjob_3"; DROP TABLE jobs_run_stats; --'
    jobs[5]["after_task_name"] = "t_myjob_4,t_myjob_5"
    path = tmp_path / "jobconfig.json"
    path.write_text(json.dumps(jobs))
    out = tmp_path / "graph.sql"
    result = export(tmp_path, str(path), "-o", str(out))
    assert result.returncode == 2 and result.stdout == ""
    assert f"{path}, job 't_myjob_3\"; DROP TABLE jobs_run_stats; --', field 'task_name'" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.parametrize(("document", "expected"), [
    ({"jobs": [{"name": "a", "image": "/db/s/r/i:1", "pool": "p", "args": ["$$; DROP TABLE t; $$"]}]},
     "job 'a', field 'args': cannot be written into the job's specification"),
    ({"jobs": [{"name": "ROOT_TASK", "image": "/db/s/r/i:1", "pool": "p"}]},
     "job 'ROOT_TASK', field 'name': the task \"ROOT_TASK\" would be the root task's name"),
    ({"jobs": [{"name": "a", "image": "/db/s/r/i:1", "pool": "p", "volumes": {".": "/data"}}]},
     "job 'a', field 'volumes': a job service cannot mount host folders"),
])
def test_what_cannot_be_a_task_graph_is_refused_with_exit_2(document: dict[str, object], expected: str,
                                                            write_pipeline: WritePipeline, tmp_path: Path) -> None:
    path = write_pipeline({"name": "root_task", **document})
    result = export(tmp_path, str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert expected in result.stderr and "nothing was written." in result.stderr and "Traceback" not in result.stderr


def test_a_bad_root_task_name_or_output_folder_is_refused(tmp_path: Path) -> None:
    result = export(SEED, "jobconfig.json", "--root-task", "root'; DROP TASK x; --")
    assert result.returncode == 2 and result.stdout == ""
    assert "field '--root-task'" in result.stderr and "not a valid Snowflake identifier" in result.stderr
    result = export(SEED, "jobconfig.json", "-o", str(tmp_path / "missing" / "graph.sql"))
    assert result.returncode == 2 and "cannot write" in result.stderr and "Traceback" not in result.stderr
    copy = tmp_path / "jobconfig.json"
    copy.write_text((SEED / "jobconfig.json").read_text())
    result = export(tmp_path, "jobconfig.json", "-o", str(copy))
    assert result.returncode == 2 and "is the pipeline file itself" in result.stderr
    assert copy.read_text() == (SEED / "jobconfig.json").read_text()
    result = export(SEED, "nothing-here.json")
    assert result.returncode == 2 and "nothing-here.json: no such file" in result.stderr


def test_the_root_task_option_names_the_root(tmp_path: Path) -> None:
    result = export(SEED, "jobconfig.json", "--root-task", "nightly_graph")
    assert result.returncode == 0, result.stderr
    assert 'CREATE OR REPLACE TASK "NIGHTLY_GRAPH"' in result.stdout and 'AFTER "NIGHTLY_GRAPH"' in result.stdout
    assert "FINALIZE = \"NIGHTLY_GRAPH\"" in result.stdout and '"ROOT_TASK"' not in result.stdout


def test_export_loads_no_store_engine_web_or_sql_parser(tmp_path: Path) -> None:
    result, modules = loaded_modules(tmp_path, "export", "snowflake", str(SEED / "pipeline.yaml"))
    assert result.returncode == 0, result.stderr
    assert among(modules, (*STORE_AND_ENGINES, *WEB, "sqlglot", "snowflake", "croniter")) == []


def test_runner_settings_come_from_the_file_and_bad_ones_are_refused(write_pipeline: WritePipeline,
                                                                     tmp_path: Path) -> None:
    job = {"name": "a", "image": "/db/s/r/i:1", "pool": "p"}
    path = write_pipeline({"name": "root_task", "jobs": [job], "runners": {"spcs": {
        "database": "PR_Container_Orchestration", "schema": "PUBLIC", "warehouse": "small_warehouse"}}})
    result = export(tmp_path, str(path))
    assert result.returncode == 0, result.stderr
    assert 'USE SCHEMA "PR_CONTAINER_ORCHESTRATION"."PUBLIC";' in result.stdout
    assert 'QUERY_WAREHOUSE = "SMALL_WAREHOUSE"' in result.stdout
    path = write_pipeline({"name": "root_task", "jobs": [job],
                           "runners": {"spcs": {"warehouse": "small wh; DROP TABLE x"}}})
    result = export(tmp_path, str(path))
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert "warehouse" in result.stderr and "not a valid Snowflake identifier" in result.stderr


@pytest.mark.parametrize("args", [["export", "--help"], ["export", "snowflake", "--help"]], ids=" ".join)
def test_exports_help_loads_only_the_command_line(tmp_path: Path, args: list[str]) -> None:
    result, modules = loaded_modules(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "Usage: jobgraph export" in result.stdout
    assert among(modules, EVERYTHING_BUT_THE_COMMAND_LINE) == []


PARAMS_AND_FAN_OUT = {"name": "root_task", "params": [
    {"name": "day", "type": "date"}, {"name": "regions", "type": "list", "default": ["emea", "amer"]}],
    "jobs": [{"name": "daily_load", "image": "/db/s/r/i:1", "pool": "p",
              "args": ["--query=select '{{ params.day }}' as day"]},
             {"name": "t_per_region", "image": "/db/s/r/i:1", "pool": "p", "after": ["daily_load"],
              "for_each": "{{ params.regions }}", "args": ["--result_table=results_{{ item }}"]},
             {"name": "report", "image": "/db/s/r/i:1", "pool": "p", "after": ["t_per_region"]}]}


def test_params_are_fixed_at_export_and_a_list_param_fans_a_job_out(write_pipeline: WritePipeline,
                                                                    tmp_path: Path) -> None:
    from tests.export.snowflake_reading import read_job_service, read_task, script_statements
    from tests.export.test_snowflake import statements_in

    path = write_pipeline(PARAMS_AND_FAN_OUT)
    out = tmp_path / "graph.sql"
    result = export(tmp_path, str(path), "--param", "day=2024-01-31", "-p", "regions=eu,us,apac", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "warning: a Snowflake task graph has no run parameters: the params' values are fixed at export" \
        in result.stderr
    script = out.read_text()
    assert '--   day = "2024-01-31" (--param)\n--   regions = ["eu", "us", "apac"] (--param)' in script
    assert "{{" not in script
    statements = script_statements(script)
    assert len(statements) == len(statements_in(script))  # Snowflake's lexer and sqlglot's parser agree
    tasks = {task.name: task for task in (read_task(text) for text in statements
                                          if text.startswith("CREATE OR REPLACE TASK"))}
    assert [name for name in tasks if name.startswith("T_PER_REGION")] == [f"T_PER_REGION_{i}" for i in range(3)]
    assert tasks["REPORT"].after == ["T_PER_REGION_0", "T_PER_REGION_1", "T_PER_REGION_2"]
    service = read_job_service(tasks["T_PER_REGION_2"].body)
    assert service.specification is not None and "--result_table=results_apac" in service.specification.text
    spec = read_job_service(tasks["DAILY_LOAD"].body).specification
    assert spec is not None and "select '2024-01-31' as day" in spec.text


@pytest.mark.parametrize(("document", "args", "expected"), [
    (PARAMS_AND_FAN_OUT, [], "field '--param day': parameter 'day' (date) has no default: give it with --param day"),
    (PARAMS_AND_FAN_OUT, ["-p", "day=2024-01-31", "-p", "dya=1"], "field '--param dya': unknown parameter 'dya'"),
    (PARAMS_AND_FAN_OUT, ["-p", "day=soon"], "field '--param day': parameter 'day' is of type date"),
    ({**PARAMS_AND_FAN_OUT, "params": [], "jobs": [{"name": "daily_load", "image": "/db/s/r/i:1", "pool": "p",
                                                     "env": {"AT": "{{ scheduled_time }}"}}]},
     [], "job 'daily_load', field 'env.AT': '{{ scheduled_time }}' has a value only when a run starts"),
    ({**PARAMS_AND_FAN_OUT, "params": [], "jobs": [
        {"name": "a", "image": "/db/s/r/i:1", "pool": "p"},
        {"name": "b", "image": "/db/s/r/i:1", "pool": "p", "after": ["a"], "for_each": {"from": "a"}}]},
     [], "job 'b', field 'for_each': a for_each over a's return value cannot be exported"),
])
def test_what_a_task_graph_cannot_fix_at_export_is_refused_with_exit_2(
        document: dict[str, object], args: list[str], expected: str, write_pipeline: WritePipeline,
        tmp_path: Path) -> None:
    path = write_pipeline(document)
    out = tmp_path / "graph.sql"
    result = export(tmp_path, str(path), *args, "-o", str(out))
    assert result.returncode == 2 and result.stdout == "" and not out.exists()
    assert f"{path}, {expected}" in result.stderr and "nothing was written." in result.stderr
    assert "Traceback" not in result.stderr
