"""The SPCS runner's session: where the connection comes from, rows keyed by lower-case names, and no secret in
an error. (No Snowflake account can be reached here: the live suite is tests/runners/test_spcs_live.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector
from snowflake.connector.errors import ProgrammingError

from jobgraph.errors import RunnerError
from jobgraph.runners import spcs_session
from jobgraph.runners.spcs_session import ConnectorSession, connect, connect_arguments, shown_arguments
from jobgraph.runners.spcs_spec import SpcsSettings

PASSWORD = "pw-hunter2-the-real-value"


def test_a_named_connection_is_read_from_connections_toml() -> None:
    arguments = connect_arguments(SpcsSettings(connection="tutorial", schema="data_schema"),
                                  {"SNOWFLAKE_ACCOUNT": "ignored", "SNOWFLAKE_PASSWORD": PASSWORD})
    assert arguments == {"connection_name": "tutorial", "schema": "data_schema", "application": "jobgraph",
                         "paramstyle": "pyformat"}


def test_the_snowflake_variables_with_key_pair_auth() -> None:
    environ = {"SNOWFLAKE_ACCOUNT": "myorg-acct", "SNOWFLAKE_USER": "jobgraph",
               "SNOWFLAKE_PRIVATE_KEY_FILE": "/keys/rsa_key.p8", "SNOWFLAKE_PRIVATE_KEY_FILE_PWD": PASSWORD,
               "SNOWFLAKE_WAREHOUSE": "env_wh", "HOME": "/root"}
    arguments = connect_arguments(SpcsSettings(warehouse="tutorial_warehouse"), environ)
    assert arguments == {"account": "myorg-acct", "user": "jobgraph", "private_key_file": "/keys/rsa_key.p8",
                         "private_key_file_pwd": PASSWORD, "authenticator": "SNOWFLAKE_JWT",
                         "warehouse": "tutorial_warehouse", "application": "jobgraph", "paramstyle": "pyformat"}
    assert PASSWORD not in str(shown_arguments(arguments))


def test_no_account_no_name_is_the_default_connection() -> None:
    assert connect_arguments(SpcsSettings(), {"SNOWFLAKE_USER": "x"}) == {"application": "jobgraph",
                                                                         "paramstyle": "pyformat"}


def test_a_refused_connection_names_where_it_came_from_without_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**arguments: Any) -> None:
        raise ProgrammingError(f"250001: could not log in with password {arguments.get('password')}")

    monkeypatch.setattr(snowflake.connector, "connect", refuse)
    monkeypatch.setenv("SNOWFLAKE_ACCOUNT", "myorg-acct")
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", PASSWORD)
    with pytest.raises(RunnerError, match=r"cannot connect to Snowflake with the SNOWFLAKE_\* variables") as caught:
        connect(SpcsSettings())
    assert PASSWORD not in str(caught.value)
    assert "***" in str(caught.value)


def test_a_missing_extra_says_what_to_install() -> None:
    """With the connector unimportable, connect() says `pip install 'jobgraph[snowflake]'` (a fresh interpreter)."""
    code = ("import sys; sys.modules['snowflake'] = None\n"
            "from jobgraph.runners.spcs_session import connect\nfrom jobgraph.runners.spcs_spec import SpcsSettings\n"
            "try:\n    connect(SpcsSettings())\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == f"RunnerError {spcs_session.MISSING_EXTRA}"
    assert "jobgraph[snowflake]" in result.stdout


class _Cursor:
    def __init__(self, log: list[tuple[str, Any]], fail: bool) -> None:
        self.log, self.fail = log, fail
        self.description: list[tuple[str, ...]] = []

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.log.append(("closed", None))

    def execute(self, sql: str, params: Any) -> None:
        self.log.append((sql, params))
        if self.fail:
            raise ProgrammingError(msg="002003 (02000): SQL compilation error: Service 'JG_X' does not exist")
        self.description = [("NAME",), ("STATUS",)]

    def fetchall(self) -> list[tuple[object, ...]]:
        return [("JG_X_1", "RUNNING")]


class _Connection:
    def __init__(self, fail: bool = False) -> None:
        self.log: list[tuple[str, Any]] = []
        self.fail = fail

    def cursor(self) -> _Cursor:
        return _Cursor(self.log, self.fail)

    def close(self) -> None:
        self.log.append(("connection closed", None))


def test_rows_come_keyed_by_lower_case_names_and_binds_go_to_the_connector() -> None:
    connection = _Connection()
    session = ConnectorSession(connection)
    assert session.execute("SHOW JOB SERVICES LIKE %s", ("JG_%",)) == [{"name": "JG_X_1", "status": "RUNNING"}]
    assert session.execute("SHOW COMPUTE POOLS") == [{"name": "JG_X_1", "status": "RUNNING"}]
    session.close()
    # No binds: None, so the connector does not %-format a text holding a literal '%'.
    assert connection.log == [("SHOW JOB SERVICES LIKE %s", ("JG_%",)), ("closed", None),
                              ("SHOW COMPUTE POOLS", None), ("closed", None), ("connection closed", None)]


def test_a_snowflake_error_names_the_statement_not_its_values() -> None:
    session = ConnectorSession(_Connection(fail=True))
    with pytest.raises(RunnerError) as caught:
        session.execute("EXECUTE JOB SERVICE IN COMPUTE POOL IDENTIFIER(%s) NAME = IDENTIFIER(%s) ASYNC = TRUE "
                        "FROM SPECIFICATION %s", ("P", "JG_X", f"env: {{X: {PASSWORD}}}"))
    assert str(caught.value).startswith("Snowflake refused EXECUTE JOB SERVICE IN COMPUTE POOL: 002003")
    assert PASSWORD not in str(caught.value)


def test_the_default_connection_of_connections_toml_is_used_with_the_settings_on_top(tmp_path: Path) -> None:
    """The connector reads its default connection only when given no argument at all; jobgraph gives some
    (database, application...), so it names the default connection itself (a fresh interpreter, as the
    connector reads its config once)."""
    toml = tmp_path / "connections.toml"
    toml.write_text('[tutorial]\naccount = "myorg-acct"\nuser = "jobgraph"\n')
    toml.chmod(0o600)
    code = ("import json, snowflake.connector\n"
            "snowflake.connector.connect = lambda **kw: print(json.dumps(kw)) or exit(0)\n"
            "from jobgraph.runners.spcs_session import connect\nfrom jobgraph.runners.spcs_spec import SpcsSettings\n"
            "connect(SpcsSettings(database='tutorial_db'))\n")
    environ = {key: value for key, value in os.environ.items() if not key.startswith("SNOWFLAKE_")}
    environ.update(SNOWFLAKE_HOME=str(tmp_path), SNOWFLAKE_DEFAULT_CONNECTION_NAME="tutorial")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=environ)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"connection_name": "tutorial", "database": "tutorial_db",
                                                          "application": "jobgraph", "paramstyle": "pyformat"}
