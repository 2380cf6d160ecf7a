"""The exported task graph, read back as Snowflake reads it: every statement parses (sqlglot's snowflake dialect,
token by token where sqlglot only knows a Command), in order, with every name quoted and every value escaped."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlglot
import yaml
from sqlglot import exp
from sqlglot.tokens import TokenType

from jobgraph.config import Pipeline, load
from jobgraph.errors import ConfigError
from jobgraph.export.snowflake import SnowflakeExport, comment, export, snowflake_schedule
from jobgraph.export.snowflake_logging import FINALIZE_TASK, GRAPH_START_VAR, RUN_GROUP_VAR, logging_inserts
from jobgraph.runners.spcs_spec import SpcsSettings
from tests.conftest import SEED, WritePipeline
from tests.export.snowflake_reading import read_job_service, read_task, tokens

HOSTILE = "x'; DROP TABLE jobs_run_stats; --\\' \" */ \n-- $ {{ }} \\\\"
"""Text that would end a string, a comment or a statement if it were pasted into SQL; braces as a job gets them."""
HOSTILE_WRITTEN = HOSTILE.replace("{{", "{{ '{{' }}")
"""HOSTILE as a pipeline file writes it in args and env, where `{{` starts a placeholder: `{{ '{{' }}` writes `{{`."""


def seed_export(name: str = "jobconfig.json", **settings: Any) -> SnowflakeExport:
    return export(load(SEED / name, "spcs"), SpcsSettings.model_validate(settings), "root_task", name)


def parsed(sql: str) -> exp.Expression:
    """One statement, parsed by sqlglot's snowflake dialect: exactly one expression."""
    trees = sqlglot.parse(sql, read="snowflake")
    assert len(trees) == 1 and trees[0] is not None, sql
    return trees[0]


def statements_in(script: str) -> list[exp.Expression]:
    """The statements sqlglot finds in a whole script (comments after the last one come back as a Semicolon)."""
    return [tree for tree in sqlglot.parse(script, read="snowflake") if not isinstance(tree, exp.Semicolon | None)]


def by_task(result: SnowflakeExport) -> dict[str, Any]:
    tasks = {}
    for statement in result.statements():
        if statement.sql.startswith("CREATE OR REPLACE TASK"):
            task = read_task(statement.sql)
            tasks[task.name] = task
    return tasks


def test_the_seeds_graph_is_one_task_per_job_after_its_predecessors_then_the_finalizer() -> None:
    result = seed_export()
    tasks = by_task(result)
    assert list(tasks) == ["ROOT_TASK", "T_MYJOB_1", "T_MYJOB_2", "T_MYJOB_3", "T_MYJOB_4", "T_MYJOB_5", "T_MYJOB_6",
                           FINALIZE_TASK]
    assert tasks["T_MYJOB_1"].after == ["ROOT_TASK"] and tasks["T_MYJOB_2"].after == ["ROOT_TASK"]
    assert tasks["T_MYJOB_3"].after == ["T_MYJOB_2"] and tasks["T_MYJOB_5"].after == ["T_MYJOB_1"]
    assert tasks["T_MYJOB_6"].after == ["T_MYJOB_3", "T_MYJOB_4", "T_MYJOB_5"]
    assert tasks[FINALIZE_TASK].clauses["FINALIZE"].text == "ROOT_TASK" and tasks[FINALIZE_TASK].after == []
    root = tasks["ROOT_TASK"]
    assert root.clauses["TASK_AUTO_RETRY_ATTEMPTS"].text == "2"  # the most any seed job asks for
    assert root.clauses["SUSPEND_TASK_AFTER_NUM_FAILURES"].text == "0"
    assert root.clauses["ALLOW_OVERLAPPING_EXECUTION"].token_type == TokenType.FALSE
    assert "SCHEDULE" not in root.clauses  # the bare seed array has none: EXECUTE TASK runs it
    assert isinstance(parsed(root.body), exp.Select)
    service = read_job_service(tasks["T_MYJOB_3"].body)
    assert service.pool == "PR_STD_POOL_S" and service.specification is not None
    assert service.specification.token_type == TokenType.RAW_STRING  # one $$ constant, the whole spec
    spec = yaml.safe_load(service.specification.text)["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "/tutorial_db/data_schema/tutorial_repository/my_job_image:latest"
    assert container["args"] == ["--query=select current_time() as time,'hello'", "--result_table=results_3"]
    assert spec["logExporters"]["eventTableConfig"]["logLevel"] == "INFO"
    assert [t.text for t in service.options["COMMENT"]] == ["jobgraph pipeline jobconfig, job t_myjob_3"]
    assert "NAME" not in service.options  # Snowflake names each execution: no collision with the last run's


def test_every_statement_parses_and_the_script_is_exactly_those_statements() -> None:
    """sqlglot reads the tables, the SELECTs and the INSERTs as trees; the task statements only as a Command
    (sqlglot has no CREATE/ALTER/DROP TASK or EXECUTE JOB SERVICE), which read_task and read_job_service read."""
    result = seed_export("pipeline.yaml")
    kinds = []
    for statement in [*result.statements(), *result.teardown]:
        tree = parsed(statement.sql)
        kinds.append(type(tree).__name__)
        if isinstance(tree, exp.Command):
            assert statement.sql.split()[0] in ("CREATE", "ALTER", "DROP"), statement.sql
            assert " TASK " in statement.sql
    assert kinds[:2] == ["Create", "Create"] and kinds.count("Select") == 1  # SYSTEM$TASK_DEPENDENTS_ENABLE
    script = result.script("pipeline.yaml")
    assert len(statements_in(script)) == len(result.statements())  # the teardown is comments
    teardown = result.teardown_script("pipeline.yaml")
    assert len(statements_in(teardown)) == len(result.teardown)


def test_the_finalizers_inserts_parse_as_inserts_from_this_runs_history() -> None:
    task = by_task(seed_export())[FINALIZE_TASK]
    stream = tokens(task.body)
    assert [t.text.upper() for t in stream[:2]] == ["EXECUTE", "IMMEDIATE"]
    assert stream[2].token_type == TokenType.RAW_STRING and len(stream) == 3
    block = stream[2].text
    inserts = [line.strip().rstrip(";") for line in block.splitlines() if line.strip().startswith("INSERT")]
    assert inserts == logging_inserts("root_task", inserts[0].split(" FROM ")[-1].split(" WHERE ")[0],
                                      f":{RUN_GROUP_VAR}", f":{GRAPH_START_VAR}")
    for insert in inserts:
        tree = parsed(insert)
        assert isinstance(tree, exp.Insert)
        assert "INFORMATION_SCHEMA.TASK_HISTORY" in insert and "RESULT_LIMIT => 10000" in insert
        assert f"graph_run_group_id = :{RUN_GROUP_VAR}" in insert


@pytest.mark.parametrize(("schedule", "expected"), [
    ("59 MINUTE", "59 MINUTE"),
    ("5 minutes", "5 MINUTE"),
    ("*/5 * * * *", "USING CRON */5 * * * * UTC"),
    ("USING CRON 0 9 * * MON America/Los_Angeles", "USING CRON 0 9 * * MON America/Los_Angeles"),
    ("0  9 * * 1-5   Europe/Paris", "USING CRON 0 9 * * 1-5 Europe/Paris"),
    ("0 9 * * 5-7", "USING CRON 0 9 * * 0,5,6 UTC"),  # Snowflake's days are 0-6: Sunday is never 7
    ("0 9 * * 7", "USING CRON 0 9 * * 0 UTC"),
    ("0 9 7,17 * SUN", "USING CRON 0 9 7,17 * SUN UTC"),  # a 7 elsewhere is a 7
])
def test_schedules_are_written_in_snowflakes_syntax(schedule: str, expected: str, write_pipeline: WritePipeline,
                                                    tmp_path: Path) -> None:
    assert snowflake_schedule(schedule) == expected
    path = write_pipeline({"schedule": schedule, "jobs": [{"name": "a", "image": "/db/s/r/img:1", "pool": "p"}]})
    root = by_task(export(load(path, "spcs"), SpcsSettings(), "root_task", str(path)))["ROOT_TASK"]
    assert root.clauses["SCHEDULE"].token_type == TokenType.STRING and root.clauses["SCHEDULE"].text == expected


def test_overlap_suspension_timeouts_and_settings_come_from_the_file(write_pipeline: WritePipeline) -> None:
    path = write_pipeline({
        "overlap": "allow", "suspend_after_failures": 3,
        "runners": {},
        "jobs": [{"name": "a", "image": "/db/s/r/img:1", "pool": "p", "timeout": "90m"},
                 {"name": "b", "image": "/db/s/r/img:1", "pool": "p", "after": ["a"], "timeout": "1.5s"}]})
    settings = SpcsSettings.model_validate({"database": "Analytics", "schema": "jobs", "warehouse": "small_wh",
                                            "external_access_integrations": ["pypi_access", "s3_access"]})
    result = export(load(path, "spcs"), settings, "nightly", str(path))
    assert parsed(result.statements()[0].sql).sql(dialect="snowflake") == 'USE SCHEMA "ANALYTICS"."JOBS"'
    tasks = by_task(result)
    root = tasks["NIGHTLY"]
    assert root.clauses["ALLOW_OVERLAPPING_EXECUTION"].token_type == TokenType.TRUE
    assert root.clauses["SUSPEND_TASK_AFTER_NUM_FAILURES"].text == "3"
    assert "TASK_AUTO_RETRY_ATTEMPTS" not in root.clauses and result.warnings == ()
    assert tasks["A"].clauses["USER_TASK_TIMEOUT_MS"].text == str(90 * 60 * 1000)
    assert tasks["B"].clauses["USER_TASK_TIMEOUT_MS"].text == "1500"
    service = read_job_service(tasks["B"].body)
    assert [t.text for t in service.options["QUERY_WAREHOUSE"]] == ["SMALL_WH"]
    assert [t.text for t in service.options["EXTERNAL_ACCESS_INTEGRATIONS"] if t.token_type == TokenType.IDENTIFIER] \
        == ["PYPI_ACCESS", "S3_ACCESS"]


def test_what_snowflake_cannot_express_is_warned_and_said_where_it_applies(write_pipeline: WritePipeline) -> None:
    path = write_pipeline({
        "overlap": "queue",
        "jobs": [{"name": "a", "image": "/db/s/r/img:1", "pool": "p", "retries": 3, "retry_delay": "10s",
                  "retry_backoff": 2},
                 {"name": "b", "image": "/db/s/r/img:1", "after": ["a"], "trigger_rule": "all_done",
                  "timeout": "3d"}]})
    result = export(load(path, "spcs"), SpcsSettings(), "root_task", str(path))
    warnings = "\n".join(result.warnings)
    assert "per-job retry counts (0, 3)" in warnings and "retry delay and backoff" in warnings
    assert "overlap 'queue'" in warnings and "job b: trigger_rule all_done" in warnings
    assert "job b names no pool" in warnings and "job b: a timeout of 259200 s" in warnings
    tasks = by_task(result)
    assert tasks["B"].clauses["USER_TASK_TIMEOUT_MS"].text == "86400000"
    script = result.script(str(path))
    assert "-- jobgraph: 3 retries, 10 s apart; Snowflake: the root task's TASK_AUTO_RETRY_ATTEMPTS." in script
    assert "-- jobgraph: runs after its predecessors however they ended (all_done)" in script
    assert all(f"-- WARNING: {warning}" in script for warning in result.warnings)


def test_hostile_text_stays_inside_its_literal(write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [
        {"name": "a", "image": f"/db/s/r/img:{HOSTILE}", "pool": "p", "args": [HOSTILE_WRITTEN, "--x=$y"],
         "env": {"MODE": HOSTILE_WRITTEN}}],
        "finalizer": {"image": "/db/s/r/fin:1", "pool": "p", "args": [HOSTILE_WRITTEN], "timeout": "10m"}})
    result = export(load(path, "spcs"), SpcsSettings(), "root_task", str(path))
    script = result.script(f"{path}\nDROP TABLE x;")  # even a file name with a line break stays in the comment
    assert len(statements_in(script)) == len(result.statements())
    tasks = by_task(result)
    service = read_job_service(tasks["A"].body)
    assert service.specification is not None
    (container,) = yaml.safe_load(service.specification.text)["spec"]["containers"]
    assert container["args"] == [HOSTILE, "--x=$y"] and container["env"]["MODE"] == HOSTILE
    assert container["image"] == f"/db/s/r/img:{HOSTILE}"
    assert tasks[FINALIZE_TASK].clauses["USER_TASK_TIMEOUT_MS"].text == "600000"  # the finalizer job's timeout
    block = tokens(tasks[FINALIZE_TASK].body)[2].text  # the finalizer's job: a string literal inside the $$ block
    job_line = block[block.index("EXECUTE JOB SERVICE"):block.rindex(";\n  RETURN")]
    inner = read_job_service(job_line)
    assert inner.specification is not None and inner.specification.token_type == TokenType.STRING
    (container,) = yaml.safe_load(inner.specification.text)["spec"]["containers"]
    assert container["args"] == [HOSTILE]


@pytest.mark.parametrize(("job", "field"), [
    ({"args": ["a $$ b"]}, "args"),
    ({"image": "/db/s/r/img:$$"}, "image"),
    ({"env": {"X": "$$"}}, "env"),
])
def test_text_that_would_end_the_dollar_constant_is_refused_naming_the_job_and_field(
        job: dict[str, Any], field: str, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [{"name": "a", "image": "/db/s/r/img:1", "pool": "p", **job}]})
    with pytest.raises(ConfigError) as error:
        export(load(path, "spcs"), SpcsSettings(), "root_task", str(path))
    (problem,) = error.value.problems
    assert problem.job == "a" and problem.field == field and "$$" in problem.message


@pytest.mark.parametrize("name", ["root_task", "ROOT_TASK", "get_graph_stats"])
def test_a_job_may_not_take_the_root_or_finalizer_tasks_name(name: str, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [{"name": name, "image": "/db/s/r/img:1", "pool": "p"}]})
    with pytest.raises(ConfigError) as error:
        export(load(path, "spcs"), SpcsSettings(), "root_task", str(path))
    (problem,) = error.value.problems
    assert problem.job == name and problem.field == "name" and "rename the job" in problem.message


def test_a_volume_or_an_unmapped_secret_is_refused_as_the_spcs_runner_refuses_it(
        write_pipeline: WritePipeline) -> None:
    """Refused when the file is loaded for SPCS (what the command does), and by the export itself for a
    pipeline loaded for another runner."""
    path = write_pipeline({"jobs": [{"name": "a", "image": "/db/s/r/img:1", "pool": "p", "volumes": {".": "/data"},
                                     "secrets": ["DB_PASSWORD"]}]})
    with pytest.raises(ConfigError) as error:
        load(path, "spcs")
    assert {(p.job, p.field) for p in error.value.problems} == {("a", "volumes"), ("a", "secrets")}
    pipeline: Pipeline = load(path, "podman")
    with pytest.raises(ConfigError) as error:
        export(pipeline, SpcsSettings(), "root_task", str(path))
    assert {(p.job, p.field) for p in error.value.problems} == {("a", "volumes"), ("a", "secrets")}
    secrets = {"DB_PASSWORD": "tutorial_db.data_schema.db_password"}
    path = write_pipeline({"runners": {"spcs": {"secrets": secrets}},
                           "jobs": [{"name": "a", "image": "/db/s/r/img:1", "pool": "p", "secrets": ["DB_PASSWORD"]}]})
    mapped = SpcsSettings.model_validate({"secrets": secrets})
    service = read_job_service(by_task(export(load(path, "spcs"), mapped, "root_task", str(path)))["A"].body)
    assert service.specification is not None
    (container,) = yaml.safe_load(service.specification.text)["spec"]["containers"]
    assert container["secrets"] == [{"snowflakeSecret": {"objectName": "tutorial_db.data_schema.db_password"},
                                     "envVarName": "DB_PASSWORD", "secretKeyRef": "secret_string"}]
    assert "DB_PASSWORD" not in container.get("env", {})


def test_a_comment_never_lets_a_line_out() -> None:
    text = "a\nDROP TABLE x;\rDROP TABLE y;\u2028DROP TABLE z;"
    assert statements_in(comment(text)) == []


def test_the_teardown_drops_dependents_first_and_keeps_the_tables() -> None:
    result = seed_export()
    sql = [statement.sql for statement in result.teardown]
    assert sql[0] == 'ALTER TASK IF EXISTS "ROOT_TASK" SUSPEND' and sql[-1] == 'DROP TASK IF EXISTS "ROOT_TASK"'
    assert sql.index('DROP TASK IF EXISTS "T_MYJOB_6"') < sql.index('DROP TASK IF EXISTS "T_MYJOB_3"')
    assert sql.index('DROP TASK IF EXISTS "T_MYJOB_5"') < sql.index('DROP TASK IF EXISTS "T_MYJOB_1"')
    assert not any("TABLE" in statement for statement in sql)


def test_a_large_graph_exports_in_order_in_reasonable_time_and_warns_past_snowflakes_limits(
        write_pipeline: WritePipeline) -> None:
    """3,000 jobs in a chain written last-first, and one job after 150 others."""
    jobs: list[dict[str, Any]] = [{"name": f"j{n}", "image": "/db/s/r/i:1", "pool": "p",
                                   **({"after": [f"j{n - 1}"]} if n else {})} for n in range(3000)]
    jobs.reverse()
    jobs.append({"name": "wide", "image": "/db/s/r/i:1", "pool": "p", "after": [f"j{n}" for n in range(150)]})
    path = write_pipeline({"jobs": jobs})
    started = time.monotonic()
    result = export(load(path, "spcs"), SpcsSettings(), "root_task", str(path))
    assert time.monotonic() - started < 30
    names = [read_task(s.sql).name for s in result.statements() if s.sql.startswith("CREATE OR REPLACE TASK")]
    assert names[1:4] == ["J0", "J1", "J2"] and names.index("J2999") < names.index(FINALIZE_TASK)
    assert names.index("WIDE") > names.index("J149")
    assert any("3003 tasks" in warning for warning in result.warnings)
    assert any("more than 100 predecessors" in warning and "wide" in warning for warning in result.warnings)


@pytest.mark.parametrize(("document", "root", "where"), [
    ({"name": "p$$q"}, "root_task", (None, "name")),
    ({}, "root$$x", (None, "root task")),
    ({}, "get_graph_stats", (None, "root task")),
    ({"jobs": [{"name": "a$$b", "image": "/db/s/r/i:1", "pool": "p"}]}, "root_task", ("a$$b", "name")),
    ({"jobs": [{"name": "a", "image": "/db/s/r/i:1", "pool": "p$$q"}]}, "root_task", ("a", "pool")),
])
def test_names_snowflake_would_take_but_the_script_cannot_hold_are_refused(
        document: dict[str, Any], root: str, where: tuple[str | None, str], write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [{"name": "a", "image": "/db/s/r/i:1", "pool": "p"}], **document})
    with pytest.raises(ConfigError) as error:
        export(load(path, "spcs"), SpcsSettings(), root, str(path))
    assert [(p.job, p.field) for p in error.value.problems] == [where]


def test_a_dollar_in_a_name_is_fine(write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"name": "p$", "jobs": [{"name": "a$", "image": "/db/s/r/i:1", "pool": "p$1"},
                                                  {"name": "b", "image": "/db/s/r/i:1", "pool": "p", "after": ["a$"]}]})
    result = export(load(path, "spcs"), SpcsSettings(), "r$", str(path))
    assert len(statements_in(result.script(str(path)))) == len(result.statements())
    tasks = by_task(result)
    assert tasks["B"].after == ["A$"] and read_job_service(tasks["A$"].body).pool == "P$1"
