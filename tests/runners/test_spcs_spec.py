"""What one SPCS attempt submits: the job service's name, its specification, and the settings they come from."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from jobgraph.config.model import Pool
from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec
from jobgraph.runners.spcs_spec import SpcsSettings, job_problems, job_spec, run_prefix, service_name, spec_yaml

RUN_ID = "0b5e3c1e-6f1a-4a3e-9a55-1d2f3e4a5b6c"
SECRET = "hunter2-the-real-value"
SEED_IMAGE = "/tutorial_db/data_schema/tutorial_repository/my_job_image:latest"
# Snowflake's rule for a service name, written out again rather than imported from the module under test.
SERVICE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def spec(task: str = "t_myjob_1", attempt: int = 1, **fields: Any) -> JobSpec:
    env = {"JOBGRAPH_RUN_ID": RUN_ID, "JOBGRAPH_RETURN_VALUE_FILE": "/home/x/.jobgraph/logs/a.return",
           **fields.pop("env", {})}
    return JobSpec(fields.pop("run_id", RUN_ID), "root_task", task, attempt, fields.pop("image", SEED_IMAGE),
                   tuple(fields.pop("args", ("--query=select 1", "--result_table=results_1"))), env,
                   Path("/tmp/unused.log"), **fields)


def test_service_name_is_the_documented_form_for_the_seed() -> None:
    assert service_name(spec()) == "JG_0B5E3C1E_T_MYJOB_1_1"
    assert service_name(spec("t_myjob_6", 3)) == "JG_0B5E3C1E_T_MYJOB_6_3"
    assert run_prefix(RUN_ID) == "JG_0B5E3C1E_"


@pytest.mark.parametrize("task", ["a$b", "_lead", "trail_", "a__b", "x" * 255, "A" * 60 + "$", "z"])
def test_service_names_are_valid_and_short_whatever_the_job(task: str) -> None:
    for attempt in (1, 12, 101):
        name = service_name(spec(task, attempt))
        assert SERVICE_NAME.match(name), name
        assert len(name) <= 63
        assert name.startswith(run_prefix(RUN_ID))
        assert name == service_name(spec(task, attempt))  # stable: a restart finds the same service


def test_service_names_are_unique_per_run_job_and_attempt() -> None:
    """Names Snowflake would fold together ($ for _, cut past 63, leading _) still get services of their own."""
    tasks = ["a$b", "a_b", "a__b", "_a_b", "a_b_", "x" * 200 + "1", "x" * 200 + "2", "X" * 200 + "1", "t_1", "t"]
    runs = [RUN_ID, "1f00aa00-6f1a-4a3e-9a55-1d2f3e4a5b6c"]
    names = {(run, task, attempt): service_name(spec(task, attempt, run_id=run))
             for run, task, attempt in itertools.product(runs, tasks, (1, 2, 11))}
    # Job names are case-insensitive in a pipeline: 'x'*200+'1' and 'X'*200+'1' cannot both be in one.
    distinct = {key: name for key, name in names.items() if not key[1].startswith("X")}
    assert len(set(distinct.values())) == len(distinct)


def test_a_run_is_told_apart_by_its_first_eight_characters() -> None:
    """The documented limit: two run ids (uuid4: 32 random bits there) alike in their first 8 letters and digits
    would give one name to the same job and attempt; Snowflake then refuses the second EXECUTE (the name
    exists), so the attempt is an ERROR, never another run's service."""
    twin = "0b5e3c1e-ffff-4a3e-9a55-1d2f3e4a5b6c"
    assert service_name(spec(run_id=twin)) == service_name(spec())


def test_job_spec_for_the_seed_job() -> None:
    doc = job_spec(spec(), SpcsSettings(), Pool(max_parallel=1, instance_family="CPU_X64_XS"))
    assert doc == {"spec": {
        "containers": [{"name": "main", "image": SEED_IMAGE,
                        "args": ["--query=select 1", "--result_table=results_1"],
                        "env": {"JOBGRAPH_RUN_ID": RUN_ID}}],
        "logExporters": {"eventTableConfig": {"logLevel": "INFO"}}}}
    assert yaml.safe_load(spec_yaml(doc)) == doc


def test_resources_come_from_the_pools_own_cpu_and_memory() -> None:
    doc = job_spec(spec(), SpcsSettings(), Pool(max_parallel=1, instance_family="CPU_X64_S", cpu=2, memory="6g"))
    assert doc["spec"]["containers"][0]["resources"] == {"requests": {"cpu": 2, "memory": "6Gi"},
                                                         "limits": {"memory": "6Gi"}}
    doc = job_spec(spec(), SpcsSettings(), Pool(max_parallel=1, memory="1536m"))
    assert doc["spec"]["containers"][0]["resources"] == {"requests": {"memory": "1536Mi"},
                                                         "limits": {"memory": "1536Mi"}}


def test_secrets_are_references_and_their_values_are_nowhere() -> None:
    settings = SpcsSettings(secrets={"DB_PASSWORD": "tutorial_db.data_schema.db_password"})
    attempt = spec(env={"DB_PASSWORD": SECRET, "NOTE": f"uses {SECRET}"}, args=(f"--password={SECRET}",),
                   secret_values=frozenset({SECRET}), secret_names=frozenset({"DB_PASSWORD"}))
    doc = job_spec(attempt, settings, None)
    container = doc["spec"]["containers"][0]
    assert container["secrets"] == [{"snowflakeSecret": {"objectName": "tutorial_db.data_schema.db_password"},
                                     "envVarName": "DB_PASSWORD", "secretKeyRef": "secret_string"}]
    assert "DB_PASSWORD" not in container["env"]
    assert container["env"]["NOTE"] == "uses ***"
    assert container["args"] == ["--password=***"]
    assert SECRET not in spec_yaml(doc)
    assert "hunter2" not in spec_yaml(doc)


def test_an_unmapped_secret_is_refused_saying_how_to_map_it() -> None:
    attempt = spec(env={"DB_PASSWORD": SECRET}, secret_values=frozenset({SECRET}),
                   secret_names=frozenset({"DB_PASSWORD"}))
    with pytest.raises(RunnerError, match=r"job t_myjob_1, field secrets: secret DB_PASSWORD .*runners\.spcs\.secrets")\
            as caught:
        job_spec(attempt, SpcsSettings(), None)
    assert SECRET not in str(caught.value)


def test_host_folders_and_workdir_are_refused_not_dropped() -> None:
    with pytest.raises(RunnerError, match="job t_myjob_1, field volumes"):
        job_spec(spec(volumes={"/data": "/data"}), SpcsSettings(), None)
    with pytest.raises(RunnerError, match="job t_myjob_1, field workdir"):
        job_spec(spec(workdir="/work"), SpcsSettings(), None)
    assert [field for field, _ in job_problems({"/a": "/b"}, "/w", ["S"], SpcsSettings())] == \
        ["volumes", "workdir", "secrets"]


def test_settings_defaults_and_aliases() -> None:
    settings = SpcsSettings.model_validate({"schema": "data_schema", "database": "tutorial_db",
                                            "warehouse": "tutorial_warehouse"})
    assert settings.schema_name == "data_schema"
    assert settings.poll_secs == 5
    assert settings.pending_limit_secs == 900  # a pool resuming or adding a node takes minutes
    assert settings.emulator is False


@pytest.mark.parametrize(("values", "where"), [
    ({"warehose": "w"}, ("warehose",)),
    ({"database": "db; DROP DATABASE x"}, ("database",)),
    ({"schema": "s'--"}, ("schema",)),
    ({"warehouse": "IDENTIFIER('x')"}, ("warehouse",)),
    ({"external_access_integrations": ["ok", "bad name"]}, ("external_access_integrations", 1)),
    ({"secrets": {"DB PW": "s"}}, ("secrets", "DB PW", "[key]")),
    ({"secrets": {"DB_PW": "a.b.c.d"}}, ("secrets", "DB_PW")),
    ({"poll_secs": 0}, ("poll_secs",)),
    ({"pending_limit_secs": -1}, ("pending_limit_secs",)),
    ({"pending_limit_secs": 86401}, ("pending_limit_secs",)),
    ({"emulator": "yes"}, ("emulator",)),
])
def test_settings_refuse_typos_and_hostile_identifiers(values: dict[str, Any], where: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        SpcsSettings.model_validate(values)
    assert [error["loc"] for error in caught.value.errors()] == [where]
