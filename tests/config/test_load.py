"""Pipeline files: the seed's array as is, the native form, and a clear message for every bad input."""

from __future__ import annotations

import gc
import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from jobgraph.config import Job, Pipeline, load
from jobgraph.config.fields import check_name
from jobgraph.config.seed import SEED_QUERY
from jobgraph.errors import ConfigError
from tests.conftest import SEED, WritePipeline, sh

IMAGE = "/tutorial_db/data_schema/tutorial_repository/my_job_image:latest"


def test_seed_array_is_read_as_the_seed_writes_it() -> None:
    pipeline = load(SEED / "jobconfig.json", runner="podman")
    jobs = {job.name: job for job in pipeline.jobs}
    assert list(jobs) == [f"t_myjob_{i}" for i in range(1, 7)]
    assert pipeline.name == "jobconfig"
    assert jobs["t_myjob_1"].after == ()
    assert jobs["t_myjob_6"].after == ("t_myjob_3", "t_myjob_4", "t_myjob_5")
    assert jobs["t_myjob_3"].retries == 2 and jobs["t_myjob_4"].retries == 1
    assert jobs["t_myjob_3"].pool == "PR_STD_POOL_S"
    assert jobs["t_myjob_3"].args == (SEED_QUERY, "--result_table=results_3")
    assert jobs["t_myjob_3"].container_name == "myjob_3"
    assert jobs["t_myjob_3"].image == IMAGE


def test_seed_pipeline_adds_pools_and_images_around_the_array() -> None:
    pipeline = load(SEED / "pipeline.yaml")
    assert pipeline.name == "root_task"
    assert pipeline.pool_size("PR_STD_POOL_XS") == 1 and pipeline.pool_size("pr_std_pool_s") == 2
    assert pipeline.images[IMAGE][:3] == ("python", "-m", "jobgraph.jobs.sql")


def test_names_are_case_insensitive_and_trimmed(tmp_path: Path) -> None:
    seed = [
        {"task_name": "t_myjob_3", "image_name": "img", "after_task_name": "ROOT_TASK"},
        {"task_name": "t_last", "image_name": "img", "after_task_name": " T_MYJOB_3 ,t_myjob_3"},
    ]
    path = tmp_path / "jobconfig.json"
    path.write_text(json.dumps(seed))
    jobs = {job.name: job for job in load(path, runner="podman").jobs}
    assert jobs["t_last"].after == ("t_myjob_3",)


def test_native_form_with_defaults_and_durations(write_pipeline: WritePipeline) -> None:
    path = write_pipeline({
        "defaults": {"retries": 2, "retry_delay": "1m30s", "timeout": "2h", "pool_size": 3},
        "pools": {"small": {"max_parallel": 1}},
        "jobs": [sh("a", "true"), sh("b", "true", after=["a"], pool="SMALL", retries=0, timeout=5)],
        "finalizer": {"image": "sh", "args": ["true"]},
    })
    pipeline = load(path)
    a, b = pipeline.jobs
    assert (a.retries, a.retry_delay, a.timeout, a.pool) == (2, 90.0, 7200.0, "default")
    assert (b.retries, b.timeout, b.pool) == (0, 5.0, "small")
    assert pipeline.pool_size("default") == 3 and pipeline.pool_size("small") == 1
    assert pipeline.finalizer is not None and pipeline.finalizer.name == "finalizer"


def test_jobs_from_includes_a_seed_array(write_pipeline: WritePipeline, tmp_path: Path) -> None:
    (tmp_path / "jobs.json").write_text(json.dumps(
        [{"task_name": "seeded", "image_name": "sh", "after_task_name": "root_task", "retry_count": 1}]))
    path = write_pipeline({"jobs_from": "jobs.json", "jobs": [sh("native", "true", after=["SEEDED"])]})
    jobs = {job.name: job for job in load(path).jobs}
    assert jobs["native"].after == ("seeded",) and jobs["seeded"].retries == 1


def _problem(path: Path, runner: str | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path, runner)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    return message


@pytest.mark.parametrize(("content", "expected"), [
    ("", "the file is empty"),
    ("   \n", "the file is empty"),
    ('[{"task_name": "a",', ":1:20: invalid JSON"),
    ("[\n  {\"task_name\": \"a\" \"image_name\": 1}\n]", ":2:21: invalid JSON: Expecting ',' delimiter"),
    ('"just a string"', "must hold a list of jobs (seed form) or a mapping (native form), not a string"),
    ("42", "not a int"),
    ("[]", "the list of jobs is empty"),
    ("[1]", "job '#1': each job must be a mapping, not a int"),
    ('[{"task_name": "a", "image_name": "x",\n  "job_name": "select \\ud800"}]',
     ":2:23: invalid JSON: '\\ud800' is a lone surrogate, not a character"),
    ('{"name": "p", "jobs": [{"name": "a", "image": "x", "env": {"\\udfff": "v"}}]}',
     ":1:61: invalid JSON: '\\udfff' is a lone surrogate, not a character"),
])
def test_bad_json_documents(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "jobconfig.json"
    path.write_text(content)
    assert expected in _problem(path)


def test_a_surrogate_pair_in_json_is_one_character(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.json"
    path.write_text('{"name": "p", "jobs": [{"name": "a", "command": ["echo"], "args": ["\\ud83d\\ude00 \\\\ud800"]}]}')
    assert load(path).jobs[0].args == ("\U0001f600 \\ud800",)


def test_not_utf8_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "jobconfig.json"
    path.write_bytes(b'[\n {"task_name": "caf\xe9"}]')
    assert ":2:20: is not UTF-8 text (byte 0xe9)" in _problem(path)


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\njobs:\n  - name: a\n   image: [x\n")
    assert ":4:" in _problem(path) and "invalid YAML" in _problem(path)


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in _problem(tmp_path / "nope.yaml")


SEED_JOB = {"task_name": "t1", "image_name": "img", "after_task_name": "root_task"}


@pytest.mark.parametrize(("changes", "expected"), [
    ({"retry_count": -1}, "job 't1', field 'retry_count': Input should be greater than or equal to 0 (got -1)"),
    ({"retry_count": 10**30}, "field 'retry_count': Input should be less than or equal to 100"),
    ({"retry_count": 1.5}, "field 'retry_count': Input should be a valid integer"),
    ({"retry_count": "2"}, "field 'retry_count': Input should be a valid integer"),
    ({"retry_count": True}, "field 'retry_count': Input should be a valid integer"),
    ({"task_name": "t1; drop table runs"}, "field 'task_name': 't1; drop table runs' is not a valid name"),
    ({"task_name": "x' OR '1'='1"}, "is not a valid name"),
    ({"task_name": ""}, "field 'task_name': a name may not be empty"),
    ({"task_name": 7}, "field 'task_name': expected a name (a string), got int"),
    ({"after_task_name": "a,,b"}, "job 't1', field 'after_task_name.1': a name may not be empty"),
    ({"after_task_name": "t1"}, "job 't1', field 'after': a job cannot run after itself"),
    ({"after_task_name": "ghost"}, "job 't1', field 'after': unknown predecessor 'ghost'"),
    ({"table_name": "results; drop"}, "field 'table_name'"),
    ({"retry_cout": 1}, "job 't1', field 'retry_cout': unknown field (did you mean 'retry_count'?"),
])
def test_bad_seed_fields_name_the_job_and_field(tmp_path: Path, changes: dict[str, object], expected: str) -> None:
    path = tmp_path / "jobconfig.json"
    path.write_text(json.dumps([{**SEED_JOB, **changes}]))
    assert expected in _problem(path, runner="podman")


def test_missing_seed_field(tmp_path: Path) -> None:
    path = tmp_path / "jobconfig.json"
    path.write_text(json.dumps([{"task_name": "t1", "image_name": "img"}]))
    assert "job 't1', field 'after_task_name': is required" in _problem(path, runner="podman")


def test_duplicate_names_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "jobconfig.json"
    path.write_text(json.dumps([SEED_JOB, {**SEED_JOB, "task_name": "T1"}]))
    assert "job 'T1', field 'name': duplicate name: 't1' is already defined" in _problem(path, runner="podman")


def test_cycle_prints_its_path(write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [sh("a", "true", after=["c"]), sh("b", "true", after=["a"]),
                                    sh("c", "true", after=["b"]), sh("d", "true")]})
    message = _problem(path)
    assert "the jobs form a cycle: " in message
    cycle = message.split("cycle: ")[1].split(" -> ")
    assert cycle[0] == cycle[-1] and sorted(set(cycle)) == ["a", "b", "c"]


@pytest.mark.parametrize(("document", "expected"), [
    ({"jobs": []}, "field 'jobs': the list of jobs is empty"),
    ({"jobs": "a"}, "field 'jobs': must be a list of jobs, not a string"),
    ({"jobs": [{"name": "a"}]}, "job 'a', field 'image': is required"),
    ({"jobs": [sh("a", "true", retries=101)]}, "job 'a', field 'retries': Input should be less than or equal to 100"),
    ({"jobs": [sh("a", "true", timeout="soon")]}, "job 'a', field 'timeout': 'soon' is not a duration"),
    ({"jobs": [sh("a", "true", after=[""])]}, "job 'a', field 'after.0': a name may not be empty"),
    ({"jobs": [sh("a", "true", trigger_rule="sometimes")]}, "job 'a', field 'trigger_rule'"),
    ({"jobs": [sh("a", "true", env={"A": 1})]}, "job 'a', field 'env.A': Input should be a valid string"),
    ({"jobs": [{"name": "a", "image": "nomap"}]}, "job 'a', field 'image': image 'nomap' has no command in 'images'"),
    ({"name": "bad name", "jobs": [sh("a", "true")]}, "field 'name': 'bad name' is not a valid name"),
    ({"schedule": "every hour", "jobs": [sh("a", "true")]}, "field 'schedule': 'every hour' is not a schedule"),
    ({"pools": {"p": {"max_parallel": 0}}, "jobs": [sh("a", "true")]}, "field 'pools.p.max_parallel'"),
    ({"jobs": [sh("a", "true")], "finalizer": {"image": "sh", "after": ["a"]}},
     "job 'finalizer': the finalizer runs after every job; it takes no 'after'"),
])
def test_bad_native_fields(write_pipeline: WritePipeline, document: dict[str, object], expected: str) -> None:
    assert expected in _problem(write_pipeline(document))


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "jobconfig.json"
    path.write_text(json.dumps([{**SEED_JOB, "retry_count": -1}, {**SEED_JOB, "task_name": "t 2"}]))
    message = _problem(path, runner="podman")
    assert "job 't1', field 'retry_count'" in message and "field 'task_name': 't 2' is not a valid name" in message


def test_a_misspelled_jobs_key_is_reported_as_missing_with_the_unknown_key(write_pipeline: WritePipeline) -> None:
    message = _problem(write_pipeline({"job": [sh("a", "true")]}))
    assert "field 'jobs': is required" in message and "field 'job': unknown field" in message


def test_a_typo_in_a_native_field_gets_a_hint(write_pipeline: WritePipeline) -> None:
    message = _problem(write_pipeline({"jobs": [sh("a", "true", afterr=["b"])]}))
    assert "job 'a', field 'afterr': unknown field (did you mean 'after'?" in message


def test_a_bad_job_is_not_echoed_as_an_empty_list_of_jobs(write_pipeline: WritePipeline) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write_pipeline({"jobs": [{"name": "a", "image": "sh", "timeoutt": 3}]}))
    assert [p.field for p in caught.value.problems] == ["timeoutt"]


def test_a_field_in_the_wrong_place_says_where_it_belongs(write_pipeline: WritePipeline) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write_pipeline({"retries": 2, "jobs": [{"name": "a", "image": "sh", "max_parallel": 3}]}))
    message = str(caught.value)
    assert "field 'retries': unknown field ('retries' belongs in a job, 'defaults' or 'finalizer', not here" in message
    assert "job 'a', field 'max_parallel': unknown field ('max_parallel' belongs in a pool, not here" in message
    assert "did you mean 'retries'" not in message


def _calls(functions: list[Any], action: Callable[[], object]) -> dict[str, int]:
    """How many times each function ran (called from Python or from pydantic's core) while `action` ran."""
    codes = {function.__code__: function.__qualname__ for function in functions}
    counts = dict.fromkeys(codes.values(), 0)

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code in codes:
            counts[codes[frame.f_code]] += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return counts


def _many_jobs(count: int) -> list[dict[str, Any]]:
    return [{"task_name": f"t_{i}", "image_name": "img", "compute_pool_name": "POOL", "retry_count": i % 3,
             "after_task_name": "root_task" if i < 2 else f"t_{i - 1},t_{i - 2}"} for i in range(count)]


@pytest.mark.parametrize("form", ["seed", "native"])
def test_each_job_is_validated_once_and_never_copied(tmp_path: Path, form: str) -> None:
    """Every name is checked once (a job's own and each predecessor), and no job model is copied."""
    seed = _many_jobs(200)
    if form == "seed":
        path = tmp_path / "jobconfig.json"
        path.write_text(json.dumps(seed))
    else:
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump({"name": "p", "images": {"img": ["true"]}, "jobs": [
            {"name": s["task_name"], "image": "img", "pool": "POOL", "retries": s["retry_count"],
             "after": s["after_task_name"].split(",") if i >= 2 else []} for i, s in enumerate(seed)]}))
    names = 200 + 2 * 198 + 200 + 1  # each job's name, predecessors and pool, and the pipeline's own name
    names += form == "seed"  # a bare array's name, made from the file's, is checked as it is made
    counts = _calls([check_name, BaseModel.__copy__], lambda: load(path, runner="podman"))
    assert counts == {"check_name": names, "BaseModel.__copy__": 0}


def test_a_job_given_to_two_pipelines_is_not_changed_by_either(tmp_path: Path) -> None:
    """Defaults are applied in place only to the jobs a pipeline built itself, never to a caller's job."""
    job = Job.model_validate({"name": "a", "image": "sh"})
    first = Pipeline.model_validate({"name": "p", "defaults": {"retries": 3}, "jobs": [job]})
    second = Pipeline.model_validate({"name": "q", "defaults": {"retries": 5}, "jobs": [job]})
    assert (job.retries, first.jobs[0].retries, second.jobs[0].retries) == (None, 3, 5)


def test_loading_leaves_the_garbage_collector_as_it_found_it(tmp_path: Path) -> None:
    path = tmp_path / "jobconfig.json"
    path.write_text(json.dumps(_many_jobs(20)))
    assert gc.isenabled()
    load(path, runner="podman")
    assert gc.isenabled()
    path.write_text(json.dumps([{**SEED_JOB, "retry_count": -1}]))
    with pytest.raises(ConfigError):
        load(path, runner="podman")
    assert gc.isenabled()
    gc.disable()
    try:
        path.write_text(json.dumps(_many_jobs(20)))
        load(path, runner="podman")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_nul_byte_in_a_seed_image_names_the_seed_field(tmp_path: Path) -> None:
    path = tmp_path / "jobconfig.json"
    path.write_text(json.dumps([{**SEED_JOB, "image_name": "img\x00"}]))
    assert "job 't1', field 'image_name': contains a NUL byte" in _problem(path, runner="podman")


def test_a_seed_job_built_without_a_second_validation_is_the_job_validation_would_build(tmp_path: Path) -> None:
    """The seed's jobs are built from fields already validated: validating their fields again changes nothing."""
    path = tmp_path / "jobconfig.json"
    path.write_text(json.dumps([*json.loads((SEED / "jobconfig.json").read_text()), {
        "task_name": "t_extra", "image_name": "img", "job_name": "x", "table_name": None, "retry_count": 0,
        "after_task_name": "T_MYJOB_1, t_myjob_2"}]))
    for job in load(path, runner="podman").jobs:
        assert Job.model_validate(job.model_dump()) == job


def test_a_cycle_behind_a_long_chain_is_found_with_its_direction(write_pipeline: WritePipeline) -> None:
    """A job after a cycle is not in it; the path reads in running order: each job runs before the next."""
    chain = [sh(f"c{i}", "true", after=[f"c{i - 1}"] if i else ["y"]) for i in range(3000)]
    path = write_pipeline({"jobs": [sh("x", "true", after=["z"]), sh("y", "true", after=["x"]),
                                    sh("z", "true", after=["y"]), *chain]})
    message = _problem(path)
    cycle = message.split("cycle: ")[1].split(" -> ")
    assert len(cycle) == 4 and cycle[0] == cycle[-1] and sorted(cycle[:3]) == ["x", "y", "z"]
    order = {"x": "y", "y": "z", "z": "x"}
    assert all(order[a] == b for a, b in itertools.pairwise(cycle))


def test_many_unknown_predecessors_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "jobconfig.json"
    path.write_text(json.dumps([{**SEED_JOB, "task_name": f"t_{i}", "after_task_name": f"t_{i}x"}
                                for i in range(3000)]))
    message = _problem(path, runner="podman")
    assert message.count("unknown predecessor") == 3000
    assert "job 't_2999', field 'after': unknown predecessor 't_2999x'" in message
    assert "job 't_0', field 'after': unknown predecessor 't_0x' (did you mean 't_0'?)" in message


@pytest.mark.parametrize(("name", "absent"), [
    ("jobconfig.json", ("yaml", "asyncio", "jobgraph.runners.local", "croniter", "sqlalchemy", "docker")),
    ("pipeline.yaml", ("asyncio", "jobgraph.runners.local", "sqlalchemy", "docker")),
])
def test_loading_a_pipeline_imports_only_what_reading_it_needs(tmp_path: Path, name: str,
                                                                absent: tuple[str, ...]) -> None:
    """Not a timing: the modules a reader has no use for (a runner's asyncio, PyYAML for JSON) stay unloaded."""
    script = ("import json, sys\nfrom jobgraph.config import load\n"
              f"load({str(SEED / name)!r}, runner='podman')\nprint(json.dumps(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    modules = set(json.loads(result.stdout))
    assert "jobgraph.config.model" in modules
    assert [m for m in modules if m.split(".")[0] in absent or m in absent] == []


@pytest.mark.parametrize("form", ["native", "seed"])
def test_jobs_that_set_the_same_fields_share_one_record_of_them(tmp_path: Path, form: str) -> None:
    """Each job carried its own set of the names of its set fields (~1 kB for twenty names): 16 MB of a
    10,000-job run once the day-one fields came. Jobs alike share one set; a copy still gets its own."""
    if form == "native":
        document: Any = {"name": "p", "images": {"sh": ["sh", "-c"]}, "defaults": {"retries": 1},
                         "jobs": [{"name": f"j{i}", "image": "sh", "args": ["true"]} for i in range(1000)]}
    else:
        document = [{"task_name": f"t{i}", "image_name": "img", "compute_pool_name": "P", "job_name": f"j{i}",
                     "table_name": f"r{i}", "retry_count": 0, "after_task_name": "root_task"} for i in range(1000)]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(document))
    pipeline = load(path, runner="podman" if form == "seed" else None)
    shared = {id(job.__pydantic_fields_set__) for job in pipeline.jobs}
    assert len(shared) == 1
    first = pipeline.jobs[0]
    changed = first.model_copy(update={"retries": 3})
    assert changed.retries == 3 and first.retries != 3
    assert changed.__pydantic_fields_set__ is not first.__pydantic_fields_set__
    assert "retries" in first.__pydantic_fields_set__
