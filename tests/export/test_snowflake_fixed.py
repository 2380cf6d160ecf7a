"""Run parameters, placeholders and for_each in the exported task graph, read back as Snowflake reads the script:
values fixed at export and said so, what only a run knows refused by job and field, one task per item."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from jobgraph.config import load
from jobgraph.errors import ConfigError
from jobgraph.export.snowflake import SnowflakeExport, export
from jobgraph.runners.spcs_spec import SpcsSettings
from tests.conftest import WritePipeline
from tests.export.snowflake_reading import read_job_service
from tests.export.test_snowflake import HOSTILE, by_task, statements_in

IMAGE = "/tutorial_db/data_schema/tutorial_repository/my_job_image:latest"


def exported(path: Path, params: dict[str, object] | None = None, root_task: str = "root_task") -> SnowflakeExport:
    return export(load(path, "spcs"), SpcsSettings(), root_task, str(path), params)


def container(result: SnowflakeExport, task: str) -> dict[str, Any]:
    """The one container of the job service a task runs, from its `$$` specification."""
    service = read_job_service(by_task(result)[task].body)
    assert service.specification is not None
    (found,) = yaml.safe_load(service.specification.text)["spec"]["containers"]
    return dict(found)


def refusal(path: Path, params: dict[str, object] | None = None, root_task: str = "root_task") -> list[Any]:
    with pytest.raises(ConfigError) as error:
        exported(path, params, root_task)
    assert error.value.file == str(path)
    return list(error.value.problems)


def test_params_are_rendered_with_their_given_or_default_values_and_the_script_says_so(
        write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"params": [{"name": "day", "type": "date"}, {"name": "suffix", "default": "daily"}],
                           "jobs": [{"name": "daily_load", "image": IMAGE, "pool": "p",
                                     "args": ["--query=select '{{ params.day }}' as day",
                                              "--result_table=load_{{ params.suffix }}"],
                                     "env": {"WHO": "{{ pipeline }}/{{ job }}"}}]})
    result = exported(path, {"day": "2024-01-31"})
    got = container(result, "DAILY_LOAD")
    assert got["args"] == ["--query=select '2024-01-31' as day", "--result_table=load_daily"]
    assert got["env"]["WHO"] == "p/daily_load"
    assert got["env"]["JOBGRAPH_PARAMS"] == '{"day":"2024-01-31","suffix":"daily"}'  # as a run's job gets it
    script = result.script(str(path))
    assert "{{" not in script and len(statements_in(script)) == len(result.statements())
    assert '--   day = "2024-01-31" (--param)\n--   suffix = "daily" (default)' in script
    assert "a Snowflake task graph has no run parameters" in result.warnings[0]
    assert 'day="2024-01-31"' in result.warnings[0]


def test_a_param_with_no_value_or_an_unknown_or_mistyped_one_is_refused_naming_the_option(
        write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"params": [{"name": "day", "type": "date"}],
                           "jobs": [{"name": "a", "image": IMAGE, "pool": "p", "args": ["{{ params.day }}"]}]})
    (problem,) = refusal(path)
    assert problem.field == "--param day" and "has no default" in problem.message
    (problem,) = refusal(path, {"day": "yesterday"})
    assert problem.field == "--param day" and "not a date" in problem.message
    problems = refusal(path, {"day": "2024-01-31", "dya": "x"})
    assert [p.field for p in problems] == ["--param dya"] and "did you mean 'day'" in problems[0].message


@pytest.mark.parametrize("name", ["scheduled_time", "run_id", "attempt"])
@pytest.mark.parametrize(("job", "field"), [
    ({"args": ["--x=1", "--at={{ NAME }}"]}, "args.1"),
    ({"env": {"AT": "day {{ NAME }}"}}, "env.AT"),
])
def test_what_only_a_run_knows_is_refused_naming_job_and_field(name: str, job: dict[str, Any], field: str,
                                                                write_pipeline: WritePipeline) -> None:
    text = yaml.safe_dump(job).replace("NAME", name)
    path = write_pipeline({"jobs": [{"name": "a", "image": IMAGE, "pool": "p", **yaml.safe_load(text)}]})
    (problem,) = refusal(path)
    assert (problem.job, problem.field) == ("a", field)
    assert f"'{{{{ {name} }}}}' has a value only when a run starts" in problem.message
    assert "Snowflake cannot put one into a job service's specification" in problem.message


def test_the_finalizers_run_time_placeholder_is_refused_too_and_its_params_rendered(
        write_pipeline: WritePipeline) -> None:
    job = {"name": "a", "image": IMAGE, "pool": "p"}
    path = write_pipeline({"params": [{"name": "n", "type": "integer", "default": 5}], "jobs": [job],
                           "finalizer": {"image": IMAGE, "pool": "p", "args": ["{{ params.n }}", "{{ run_id }}"]}})
    (problem,) = refusal(path)
    assert (problem.job, problem.field) == ("finalizer", "args.1")
    path = write_pipeline({"params": [{"name": "n", "type": "integer", "default": 5}], "jobs": [job],
                           "finalizer": {"image": IMAGE, "pool": "p", "args": ["--n={{ params.n }}"]}})
    script = exported(path, {"n": "7"}).script(str(path))
    assert "--n=7" in script and "{{" not in script


def test_a_literal_for_each_is_one_task_per_item_and_its_dependents_wait_for_every_copy(
        write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [
        {"name": "t_myjob_1", "image": IMAGE, "pool": "p"},
        {"name": "t_per_region", "image": IMAGE, "pool": "p", "after": ["t_myjob_1"],
         "for_each": ["emea", "amer", {"code": "apac"}],
         "args": ["--query=select '{{ item }}' as region", "--job={{ job }}"]},
        {"name": "report", "image": IMAGE, "pool": "p", "after": ["T_PER_REGION", "t_myjob_1"]}]})
    result = exported(path)
    tasks = by_task(result)
    assert list(tasks) == ["ROOT_TASK", "T_MYJOB_1", "T_PER_REGION_0", "T_PER_REGION_1", "T_PER_REGION_2", "REPORT",
                           "GET_GRAPH_STATS"]
    assert all(tasks[f"T_PER_REGION_{i}"].after == ["T_MYJOB_1"] for i in range(3))
    assert tasks["REPORT"].after == ["T_PER_REGION_0", "T_PER_REGION_1", "T_PER_REGION_2", "T_MYJOB_1"]
    copies = [container(result, f"T_PER_REGION_{i}") for i in range(3)]
    assert [c["args"][0] for c in copies] == ["--query=select 'emea' as region", "--query=select 'amer' as region",
                                              '--query=select \'{"code":"apac"}\' as region']
    assert [c["args"][1] for c in copies] == [f"--job=t_per_region[{i}]" for i in range(3)]  # jobgraph's copy name
    assert [(c["env"]["JOBGRAPH_TASK"], c["env"]["JOBGRAPH_ITEM"]) for c in copies] == [
        ("t_per_region[0]", "emea"), ("t_per_region[1]", "amer"), ("t_per_region[2]", '{"code":"apac"}')]
    script = result.script(str(path))
    assert len(statements_in(script)) == len(result.statements()) and "{{" not in script
    assert "-- Copy 1 of job t_per_region's for_each (3 items, one task each; jobgraph names it t_per_region[1]): " \
           'item "amer".' in script
    assert "-- AFTER every copy of t_per_region: it runs once all of them succeeded" in script
    teardown = [s.sql for s in result.teardown]
    assert teardown.index('DROP TASK IF EXISTS "REPORT"') < teardown.index('DROP TASK IF EXISTS "T_PER_REGION_2"')
    assert 'DROP TASK IF EXISTS "T_PER_REGION"' not in teardown


def test_a_list_param_fans_out_over_its_given_or_default_value(write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"params": [{"name": "regions", "type": "list", "default": ["eu"]}],
                           "jobs": [{"name": "load", "image": IMAGE, "pool": "p", "for_each": "{{ params.regions }}",
                                     "args": ["--region={{ item }}", "--all={{ params.regions }}"]}]})
    assert list(by_task(exported(path))) == ["ROOT_TASK", "LOAD_0", "GET_GRAPH_STATS"]
    result = exported(path, {"regions": "us,apac"})
    assert [container(result, f"LOAD_{i}")["args"] for i in range(2)] == [
        ["--region=us", '--all=["us","apac"]'], ["--region=apac", '--all=["us","apac"]']]
    assert '--   regions = ["us", "apac"] (--param)' in result.script(str(path))


def test_an_empty_list_makes_no_task_and_its_dependents_follow_its_predecessors(
        write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"params": [{"name": "regions", "type": "list", "default": []}], "jobs": [
        {"name": "a", "image": IMAGE, "pool": "p"},
        {"name": "fan", "image": IMAGE, "pool": "p", "after": ["a"], "for_each": "{{ params.regions }}"},
        {"name": "b", "image": IMAGE, "pool": "p", "after": ["fan"]}]})
    result = exported(path)
    tasks = by_task(result)
    assert list(tasks) == ["ROOT_TASK", "A", "B", "GET_GRAPH_STATS"] and tasks["B"].after == ["A"]
    assert any("job fan: for_each gave an empty list: no task" in w for w in result.warnings)


@pytest.mark.parametrize("for_each", ["{{ a.return_value }}", {"from": "a"}])
def test_for_each_over_a_return_value_is_refused_naming_job_and_field(for_each: object,
                                                                      write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [{"name": "a", "image": IMAGE, "pool": "p"},
                                    {"name": "b", "image": IMAGE, "pool": "p", "after": ["a"], "for_each": for_each,
                                     "args": ["{{ item }}"]}]})
    (problem,) = refusal(path)
    assert (problem.job, problem.field) == ("b", "for_each")
    assert "a for_each over a's return value cannot be exported" in problem.message


@pytest.mark.parametrize(("jobs", "root_task", "expected"), [
    ([{"name": "load_1"}], "root_task", "its copy's task would be named load_1, which job load_1 has"),
    ([{"name": "LOAD_0"}], "root_task", "its copy's task would be named load_0, which job LOAD_0 has"),
    ([], "LOAD_1", "its copy's task would be named load_1, which the root task has"),
    ([{"name": "load_1x", "for_each": ["a"]}, {"name": "load_1"}], "root_task", "which job load_1 has"),
])
def test_a_copys_task_name_that_another_task_has_is_refused(jobs: list[dict[str, Any]], root_task: str,
                                                            expected: str, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [{"name": "load", "image": IMAGE, "pool": "p", "for_each": ["x", "y"]},
                                    *({"image": IMAGE, "pool": "p", **job} for job in jobs)]})
    (problem,) = refusal(path, root_task=root_task)
    assert (problem.job, problem.field) == ("load", "for_each") and expected in problem.message


def test_two_fanned_out_jobs_whose_copies_would_share_a_name_are_refused(write_pipeline: WritePipeline) -> None:
    items = [str(i) for i in range(11)]  # a_1's copy a_1_0 ... and a's copy a_10 are fine; a's a_1 is job a_1's
    path = write_pipeline({"jobs": [{"name": "a", "image": IMAGE, "pool": "p", "for_each": items},
                                    {"name": "a_1", "image": IMAGE, "pool": "p", "for_each": items}]})
    (problem,) = refusal(path)
    assert (problem.job, problem.field) == ("a", "for_each") and "which job a_1 has" in problem.message


def test_more_copies_than_snowflakes_predecessor_and_task_limits_are_warned(write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [
        {"name": "wide", "image": IMAGE, "pool": "p", "for_each": list(range(1000)), "max_fan_out": 1000},
        {"name": "after_all", "image": IMAGE, "pool": "p", "after": ["wide"]}]})
    result = exported(path)
    assert len(by_task(result)["AFTER_ALL"].after) == 1000
    warnings = "\n".join(result.warnings)
    assert "1003 tasks (the jobs and their for_each copies, the root and the finalizer) is more than Snowflake's " \
           "1000" in warnings
    assert "more than 100 predecessors (for_each copies count one each), Snowflake's limit per task: Snowflake will " \
           "refuse after_all" in warnings


def test_a_list_param_wider_than_max_fan_out_is_refused(write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"params": [{"name": "l", "type": "list"}], "jobs": [
        {"name": "a", "image": IMAGE, "pool": "p", "for_each": "{{ params.l }}", "max_fan_out": 2}]})
    (problem,) = refusal(path, {"l": "x,y,z"})
    assert (problem.job, problem.field) == ("a", "for_each") and "3 items, more than max_fan_out 2" in problem.message


def test_hostile_param_values_and_items_stay_inside_the_specification(write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"params": [{"name": "q", "default": "unused"}], "jobs": [
        {"name": "a", "image": IMAGE, "pool": "p", "args": ["{{ params.q }}"], "env": {"Q": "{{ params.q }}"}},
        {"name": "b", "image": IMAGE, "pool": "p", "for_each": [HOSTILE, {"k": HOSTILE}],
         "args": ["{{ item }}"]}]})
    result = exported(path, {"q": HOSTILE})
    script = result.script(str(path))
    assert len(statements_in(script)) == len(result.statements())
    assert container(result, "A")["args"] == [HOSTILE] and container(result, "A")["env"]["Q"] == HOSTILE
    assert container(result, "B_0")["args"] == [HOSTILE] and container(result, "B_0")["env"]["JOBGRAPH_ITEM"] == HOSTILE
    assert yaml.safe_load(container(result, "B_1")["args"][0]) == {"k": HOSTILE}
    assert "-- Copy 0 of job b's for_each" in script and "\nDROP TABLE jobs_run_stats" not in script


@pytest.mark.parametrize(("job", "params", "where"), [
    ({"args": ["--x={{ params.q }}"]}, {"q": "a $$ b"}, (None, "--param q")),
    ({}, {"q": "$$"}, (None, "--param q")),  # unused, but in every job's $JOBGRAPH_PARAMS
    ({}, {}, (None, "params.q")),  # the default's
    ({"args": ["--x=$", "--y=${{ params.q }}"]}, {"q": "$ b"}, ("a", "args.1")),
    ({"env": {"X": "{{ params.q }}$"}}, {"q": "b$"}, ("a", "env.X")),
    ({"for_each": ["ok", "$$; DROP TABLE t; $$"], "args": ["{{ item }}"]}, {}, ("a", "for_each")),
    ({"for_each": [{"k": "$$"}]}, {}, ("a", "for_each")),  # no {{ item }}, but in $JOBGRAPH_ITEM
    ({"for_each": ["$x"], "args": ["${{ item }}"]}, {}, ("a", "args.0")),
    ({"for_each": ["a\x00b"]}, {}, ("a", "for_each")),
])
def test_a_value_that_would_end_the_dollar_constant_or_holds_a_nul_is_refused_naming_job_and_field(
        job: dict[str, Any], params: dict[str, object], where: tuple[str | None, str],
        write_pipeline: WritePipeline) -> None:
    default = "x" if job or params else "$$"
    path = write_pipeline({"params": [{"name": "q", "default": default}],
                           "jobs": [{"name": "a", "image": IMAGE, "pool": "p", **job}]})
    (problem,) = refusal(path, params)
    assert (problem.job, problem.field) == where and ("$$" in problem.message or "NUL" in problem.message)
