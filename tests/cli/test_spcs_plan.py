"""The spcs runner where a user meets it without an account: `plan --runner spcs` (every statement a run would send,
rendered, nothing contacted) and `validate` (settings and jobs SPCS cannot take refused before anything runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlglot
import yaml
from sqlglot.dialects.snowflake import Snowflake
from sqlglot.tokens import TokenType

from jobgraph.runners.spcs_spec import spec_yaml
from tests.cli.test_imports import among, loaded_modules
from tests.conftest import WritePipeline

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "pipeline.yaml"
SECRET = "s3cr3t-db-password-that-must-not-show"


def jobgraph(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "DB_PASSWORD": SECRET, "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    return subprocess.run([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def strings(sql: str) -> list[str]:
    """The string literals of a statement, as Snowflake's lexer (sqlglot's) reads them."""
    head = Snowflake().tokenize(sql)[0].text
    return [token.text for token in Snowflake().tokenize(sql[len(head):]) if token.token_type == TokenType.STRING]


def test_plan_runner_spcs_shows_the_seeds_statements_and_specs(tmp_path: Path) -> None:
    result = jobgraph(tmp_path, "plan", str(SEED), "--runner", "spcs")
    assert result.returncode == 0, result.stderr
    jobs = yaml.safe_load(result.stdout)["jobs"]
    assert [job["service"] for job in jobs] == [f"JG_RUNID_T_MYJOB_{n}_1" for n in range(1, 7)]
    assert not (tmp_path / ".jobgraph").exists()  # nothing written, no store opened
    for job in jobs:
        submit = job["statements"]["submit"]
        pool, name, comment, spec = strings(submit)
        assert (pool, name) == (job["pool"], job["service"])
        assert comment == f"jobgraph pipeline root_task run <run id> job {job['job']} attempt 1"
        assert spec == spec_yaml(job["spec"])  # the spec sent is exactly the one shown
        container = job["spec"]["spec"]["containers"][0]
        assert container["image"] == "/tutorial_db/data_schema/tutorial_repository/my_job_image:latest"
        assert container["args"][1] == f"--result_table=results_{job['job'][-1]}"
        assert "JOBGRAPH_RETURN_VALUE_FILE" not in container["env"]
        assert job["statements"]["check_pools"] == "SHOW COMPUTE POOLS"
        assert job["statements"]["poll"] == "SHOW JOB SERVICES LIKE 'JG_RUNID_%'"
        assert job["statements"]["cancel"] == f"DROP SERVICE IF EXISTS IDENTIFIER('{job['service']}')"
    assert jobs[0]["pool"] == "PR_STD_POOL_XS" and jobs[1]["pool"] == "PR_STD_POOL_S"


def test_plan_loads_no_snowflake_client(tmp_path: Path) -> None:
    result, modules = loaded_modules(tmp_path, "plan", str(SEED), "--runner", "spcs")
    assert result.returncode == 0, result.stderr
    assert among(modules, ("snowflake", "sqlglot", "docker", "jobgraph.runners.spcs_emulator")) == []


def seed_with(write_pipeline: WritePipeline, runners: dict[str, Any] | None = None, **job: Any) -> Path:
    return write_pipeline({
        "name": "root_task",
        "pools": {"PR_STD_POOL_XS": {"max_parallel": 1, "instance_family": "CPU_X64_XS"}},
        **({"runners": {"spcs": runners}} if runners is not None else {}),
        "jobs": [{"name": "t_myjob_1", "image": "/tutorial_db/data_schema/tutorial_repository/my_job_image:latest",
                  "args": ["--query=select 1", "--result_table=results_1"], "pool": "PR_STD_POOL_XS",
                  "runner": "spcs", **job}]}, with_sh=False)


def test_secrets_are_snowflake_secret_references_never_values(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = seed_with(write_pipeline, {"secrets": {"DB_PASSWORD": "tutorial_db.data_schema.db_password"}},
                     secrets=["DB_PASSWORD"], env={"NOTE": "plain"})
    result = jobgraph(tmp_path, "plan", str(path))
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout and SECRET not in result.stderr
    container = yaml.safe_load(result.stdout)["jobs"][0]["spec"]["spec"]["containers"][0]
    assert container["secrets"] == [{"snowflakeSecret": {"objectName": "tutorial_db.data_schema.db_password"},
                                     "envVarName": "DB_PASSWORD", "secretKeyRef": "secret_string"}]
    assert "DB_PASSWORD" not in container["env"] and container["env"]["NOTE"] == "plain"


@pytest.mark.parametrize(("runners", "field", "message"), [
    ({"warehose": "tutorial_warehouse"}, "runners.spcs.warehose", "unknown field"),
    ({"warehouse": "w; DROP DATABASE tutorial_db"}, "runners.spcs.warehouse", "not a valid Snowflake identifier"),
    ({"schema": "data_schema'--"}, "runners.spcs.schema", "not a valid Snowflake identifier"),
    ({"external_access_integrations": ["ok", "x) FROM SPECIFICATION"]}, "runners.spcs.external_access_integrations.1",
     "not a valid Snowflake identifier"),
    ({"poll_secs": "fast"}, "runners.spcs.poll_secs", "valid number"),
    ({"pending_limit_secs": 0}, "runners.spcs.pending_limit_secs", "greater than 0"),
])
def test_bad_settings_are_refused_naming_file_runner_and_field(tmp_path: Path, write_pipeline: WritePipeline,
                                                               runners: dict[str, Any], field: str,
                                                               message: str) -> None:
    path = seed_with(write_pipeline, runners)
    for command in ("validate", "plan", "run"):
        result = jobgraph(tmp_path, command, str(path))
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"{path}, field '{field}': " in result.stderr and message in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / ".jobgraph" / "logs").exists()  # nothing ran


def test_what_a_job_service_cannot_take_is_refused_naming_the_job(tmp_path: Path,
                                                                    write_pipeline: WritePipeline) -> None:
    path = seed_with(write_pipeline, {}, secrets=["DB_PASSWORD"], volumes={"/srv/data": "/data"})
    result = jobgraph(tmp_path, "validate", str(path))
    assert result.returncode == 2
    assert f"{path}, job 't_myjob_1', field 'volumes': a job service cannot mount host folders" in result.stderr
    assert (f"{path}, job 't_myjob_1', field 'secrets': secret DB_PASSWORD has no Snowflake secret" in result.stderr
            and "runners.spcs.secrets" in result.stderr)
    assert SECRET not in result.stderr


def test_hostile_args_and_env_stay_inside_the_specs_literal(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    hostile = ["--query=select '$$'; DROP TABLE results_1; --", "it\\'s", "a\nb\r\nc", "%s %(x)s %%", "$$"]
    path = seed_with(write_pipeline, {}, args=hostile, env={"NOTE": "x'); DROP SERVICE y; --\n$$"})
    result = jobgraph(tmp_path, "plan", str(path))
    assert result.returncode == 0, result.stderr
    [job] = yaml.safe_load(result.stdout)["jobs"]
    assert job["spec"]["spec"]["containers"][0]["args"] == hostile
    for text in job["statements"].values():
        sqlglot.parse(text, read="snowflake", error_level=sqlglot.ErrorLevel.RAISE)  # one statement each
    submit = job["statements"]["submit"]
    assert strings(submit)[-1] == spec_yaml(job["spec"])
    assert [token.token_type for token in Snowflake().tokenize(submit[len("EXECUTE"):])][-3:] == \
        [TokenType.FROM, TokenType.VAR, TokenType.STRING]  # FROM SPECIFICATION '<the whole spec>', nothing after
