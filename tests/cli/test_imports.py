"""Each command imports only what it needs: what a command loads is checked, so start-up cannot silently grow.

Every command runs in a fresh `python`, through the same entry point as the `jobgraph` script; the test
reads which modules were loaded once it has ended. Not a timing: the modules named here are the ones
that cost start-up time (the store's SQLAlchemy and Alembic, Docker's SDK and its HTTP stack, croniter,
pydantic, rich), so a command that has no use for them must never load them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobgraph.cli import app
from jobgraph.store.views import VIEW_NAMES
from tests.conftest import SEED

STORE_AND_ENGINES = ("sqlalchemy", "alembic", "psycopg", "jobgraph.store", "jobgraph.recovery", "jobgraph.scheduler",
                     "docker", "requests", "urllib3", "http.client", "jobgraph.runners.container",
                     "jobgraph.runners.service")
"""What reading a pipeline file never needs: the store, container engines, HTTP."""
WEB = ("starlette", "uvicorn", "jinja2", "anyio", "httpx", "prometheus_client", "jobgraph.web")
"""What only `jobgraph web` and `serve --http` need: the web stack."""
SCHEDULES = ("croniter", "dateutil")
"""What only a cron schedule needs."""
EVERYTHING_BUT_THE_COMMAND_LINE = (*STORE_AND_ENGINES, *SCHEDULES, *WEB, "yaml", "rich", "asyncio", "jobgraph.config",
                                   "jobgraph.engine", "jobgraph.runners", "jobgraph.cli.common")
"""What help never needs: it is answered from the command line's definition alone. (Typer checks the value of
every parameter of a subcommand with pydantic, its help option's too, so a subcommand's help loads pydantic.)"""

RECORD_MODULES = """
import atexit, json, sys
record, sys.argv = sys.argv[1], ["jobgraph", *sys.argv[2:]]

def write():
    with open(record, "w") as file:
        json.dump(sorted(sys.modules), file)

atexit.register(write)  # jobgraph ends with os._exit once its command is over, after the atexit handlers
from jobgraph.cli import main
main()
"""

COMMANDS = [command.callback.__name__ for command in app.registered_commands if command.callback]


def loaded_modules(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `jobgraph ARGS` in a fresh interpreter; its result, and every module it had loaded when it ended."""
    record = tmp_path / "modules.json"
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "200"}
    env.pop("JOBGRAPH_STORE", None)
    result = subprocess.run([sys.executable, "-c", RECORD_MODULES, str(record), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    return result, set(json.loads(record.read_text()))


def among(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The modules that are one of `packages` or inside one of them."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


@pytest.mark.parametrize("args", [["--help"], ["--version"]], ids=" ".join)
def test_help_and_version_load_only_the_command_line(tmp_path: Path, args: list[str]) -> None:
    result, modules = loaded_modules(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "Usage: jobgraph" in result.stdout or result.stdout.startswith("jobgraph ")
    assert among(modules, (*EVERYTHING_BUT_THE_COMMAND_LINE, "pydantic")) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_loads_only_the_command_line(tmp_path: Path, command: str) -> None:
    result, modules = loaded_modules(tmp_path, command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"Usage: jobgraph {command} " in result.stdout
    assert among(modules, EVERYTHING_BUT_THE_COMMAND_LINE) == []


@pytest.mark.parametrize("args", [
    ["validate", str(SEED / "jobconfig.json"), "--runner", "podman"],  # a container pipeline: no Docker SDK
    ["validate", str(SEED / "pipeline.yaml")],  # an interval schedule: no cron to compute
    ["validate", str(SEED / "pipeline.yaml"), "--format", "json"],
    ["graph", str(SEED / "jobconfig.json"), "--runner", "podman"],
    ["graph", str(SEED / "pipeline.yaml"), "--format", "json"],
    ["plan", str(SEED / "pipeline.yaml")],
    ["plan", str(SEED / "pipeline.yaml"), "--format", "json"],
], ids=lambda args: " ".join(Path(a).name for a in args))
def test_reading_a_pipeline_never_loads_the_store_an_engine_or_cron(tmp_path: Path, args: list[str]) -> None:
    result, modules = loaded_modules(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "t_myjob_1" in result.stdout or ": ok: pipeline '" in result.stdout or '"valid": true' in result.stdout
    assert among(modules, (*STORE_AND_ENGINES, *SCHEDULES, *WEB)) == []
    assert not (tmp_path / ".jobgraph").exists()


def test_a_cron_schedule_still_loads_croniter_when_it_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "cron.yaml"
    path.write_text("name: p\nschedule: USING CRON 0 9 * * MON UTC\njobs: [{name: a, image: sh}]\n"
                    "images: {sh: [sh, -c]}\n")
    result, modules = loaded_modules(tmp_path, "validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "next fire 20" in result.stdout and "croniter" in modules
    assert among(modules, STORE_AND_ENGINES) == []


def test_schema_loads_the_config_models_but_not_the_store_or_an_engine(tmp_path: Path) -> None:
    result, modules = loaded_modules(tmp_path, "schema")
    assert result.returncode == 0, result.stderr
    assert "slurm" in json.loads(result.stdout)["properties"]["runners"]["properties"]
    assert among(modules, (*STORE_AND_ENGINES, *WEB)) == []


def test_a_bad_file_is_reported_without_loading_the_store(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: p\njobs: [{name: a, image: sh, retries: -1}]\n")
    result, modules = loaded_modules(tmp_path, "validate", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert "bad.yaml" in result.stderr and "retries" in result.stderr and "Traceback" not in result.stderr
    assert among(modules, STORE_AND_ENGINES) == []
    result, modules = loaded_modules(tmp_path, "validate", str(path), "--format", "json")
    assert result.returncode == 2 and result.stderr == ""
    assert [(e["job"], e["field"]) for e in json.loads(result.stdout)["errors"]] == [("a", "retries")]
    assert among(modules, STORE_AND_ENGINES) == []


@pytest.mark.parametrize("args", [["history"], ["history", "--format", "json"], ["stats", "jobs_run_stats"]],
                         ids=" ".join)
def test_reading_the_store_never_loads_the_config_models_the_engine_or_an_engine_sdk(tmp_path: Path,
                                                                                    args: list[str]) -> None:
    result, modules = loaded_modules(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".jobgraph" / "jobgraph.db").is_file()
    assert among(modules, ("jobgraph.config", "jobgraph.engine.run", "jobgraph.runners.local", "yaml", *SCHEDULES,
                           "docker", "requests", "urllib3", "http.client", "jobgraph.runners.container", *WEB)) == []


def test_stats_help_names_every_view_the_store_has(tmp_path: Path) -> None:
    result, _ = loaded_modules(tmp_path, "stats", "--help")
    assert result.returncode == 0, result.stderr
    assert all(view in result.stdout for view in VIEW_NAMES)


def test_a_run_on_a_sqlite_store_never_loads_sqlalchemy_but_history_does(tmp_path: Path) -> None:
    """`jobgraph run` records through sqlite3 (store/sqlite_records.py), on a new store and an existing one alike."""
    (tmp_path / "p.yaml").write_text("name: p\nimages: {sh: [sh, -c]}\njobs: [{name: a, image: sh, args: ['true']}]\n")
    for _ in ("new store", "existing store"):
        result, modules = loaded_modules(tmp_path, "run", "p.yaml")
        assert result.returncode == 0, result.stderr
        assert "SUCCEEDED" in result.stdout and (tmp_path / ".jobgraph" / "jobgraph.db").is_file()
        assert among(modules, ("sqlalchemy", "alembic", *WEB)) == []
    result, modules = loaded_modules(tmp_path, "history")
    assert result.returncode == 0 and "sqlalchemy" in modules


@pytest.mark.parametrize("args", [["token", "--help"], ["token", "create", "--help"], ["token", "list", "--help"],
                                  ["token", "revoke", "--help"]], ids=" ".join)
def test_the_token_commands_help_loads_only_the_command_line(tmp_path: Path, args: list[str]) -> None:
    result, modules = loaded_modules(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert f"Usage: jobgraph {' '.join(args[:-1])}" in result.stdout
    assert among(modules, EVERYTHING_BUT_THE_COMMAND_LINE) == []


def test_token_list_reads_the_store_without_the_web_stack(tmp_path: Path) -> None:
    result, modules = loaded_modules(tmp_path, "token", "list")
    assert result.returncode == 0, result.stderr
    assert "API tokens" in result.stdout and among(modules, WEB) == []
