"""The SPCS runner's one need of Snowflake: run a statement, get its rows. The connector is imported here only.

`SqlSession` is that need as a protocol, so the runner is the same against Snowflake (the connector, the
optional extra `jobgraph[snowflake]`) and against jobgraph's local emulator (spcs_emulator.py, which runs
each job service's container through Podman). The connector is blocking: the runner calls `execute` in a
worker thread, never on the event loop.

Where the connection comes from, in the connector's own terms:
- `runners.spcs.connection` names a connection of connections.toml (`~/.snowflake/connections.toml`, or
  `$SNOWFLAKE_HOME`); key-pair auth is `authenticator = "SNOWFLAKE_JWT"` and `private_key_file` there;
- else, with `SNOWFLAKE_ACCOUNT` set, the `SNOWFLAKE_*` variables (USER, PASSWORD, ROLE, AUTHENTICATOR,
  PRIVATE_KEY_FILE, PRIVATE_KEY_FILE_PWD, HOST...);
- else the connector's default connection (`default_connection_name`, `SNOWFLAKE_DEFAULT_CONNECTION_NAME`).
The settings' database, schema and warehouse, when set, win over the connection's.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from jobgraph.errors import RunnerError
from jobgraph.runners.spcs_spec import SpcsSettings

if TYPE_CHECKING:
    from jobgraph.config.model import Pool

MISSING_EXTRA = "the spcs runner needs the Snowflake connector: pip install 'jobgraph[snowflake]'"

ENVIRONMENT = {
    "SNOWFLAKE_ACCOUNT": "account", "SNOWFLAKE_USER": "user", "SNOWFLAKE_PASSWORD": "password",
    "SNOWFLAKE_ROLE": "role", "SNOWFLAKE_AUTHENTICATOR": "authenticator", "SNOWFLAKE_HOST": "host",
    "SNOWFLAKE_PRIVATE_KEY_FILE": "private_key_file", "SNOWFLAKE_PRIVATE_KEY_FILE_PWD": "private_key_file_pwd",
    "SNOWFLAKE_TOKEN": "token", "SNOWFLAKE_WAREHOUSE": "warehouse", "SNOWFLAKE_DATABASE": "database",
    "SNOWFLAKE_SCHEMA": "schema",
}
"""The variables read when no connection is named and SNOWFLAKE_ACCOUNT is set, and the connect() argument each is."""

SECRET_ARGUMENTS = frozenset({"password", "private_key_file_pwd", "token"})


class SqlSession(Protocol):
    """One connection that runs statements: Snowflake's, or the emulator's."""

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[dict[str, object]]:
        """Run one statement with its binds; its rows, each a dict keyed by lower-case column name."""
        ...

    def close(self) -> None:
        """Close the connection (job services started ASYNC go on)."""
        ...


class ConnectorSession:
    """A SqlSession over snowflake-connector-python (pyformat binds, filled and escaped by the connector)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[dict[str, object]]:
        """Run the statement; every row keyed by lower-case column name. A Snowflake error is a RunnerError
        with Snowflake's message (the statement's values are not in it)."""
        from snowflake.connector.errors import Error

        try:
            with self._connection.cursor() as cursor:
                cursor.execute(sql, params or None)
                names = [column[0].lower() for column in cursor.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except Error as exc:
            raise RunnerError(f"Snowflake refused {verb(sql)}: {getattr(exc, 'msg', None) or exc}") from None

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


def verb(sql: str) -> str:
    """What a statement does, without its values: its words before the first bind or parenthesis."""
    return re.split(r"IDENTIFIER\(|%s|\(|\"", sql, maxsplit=1)[0].strip()


def connect_arguments(settings: SpcsSettings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What `snowflake.connector.connect` is given (secrets included: never log this)."""
    environ = os.environ if environ is None else environ
    arguments: dict[str, Any] = {}
    if settings.connection:
        arguments["connection_name"] = settings.connection
    elif environ.get("SNOWFLAKE_ACCOUNT"):
        arguments.update({key: environ[name] for name, key in ENVIRONMENT.items() if environ.get(name)})
        if "private_key_file" in arguments and "authenticator" not in arguments:
            arguments["authenticator"] = "SNOWFLAKE_JWT"
    for key, value in (("database", settings.database), ("schema", settings.schema_name),
                       ("warehouse", settings.warehouse)):
        if value:
            arguments[key] = value
    arguments.setdefault("application", "jobgraph")
    arguments.setdefault("paramstyle", "pyformat")
    return arguments


def shown_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The connect() arguments with every secret replaced by `***`, for a message."""
    return {key: ("***" if key in SECRET_ARGUMENTS else value) for key, value in arguments.items()}


def connect(settings: SpcsSettings, container_images: Mapping[str, str] | None = None,
            pools: Mapping[str, Pool] | None = None, folder: Path | None = None) -> SqlSession:
    """A session for the settings: the emulator's when `settings.emulator` (with the pipeline's
    `container_images`, which map the spec's image to a local one, its `pools`, which SHOW COMPUTE POOLS
    lists there, and jobgraph's folder, where it may start a Podman service), else Snowflake's through the
    connector. A RunnerError says why it cannot connect (never with a secret in it)."""
    if settings.emulator:
        emulator = importlib.import_module("jobgraph.runners.spcs_emulator")  # the spcs-emulator's own module
        return cast(SqlSession, emulator.EmulatorSession(settings, dict(container_images or {}), pools=pools,
                                                          folder=folder))
    try:
        import snowflake.connector
    except ModuleNotFoundError:
        raise RunnerError(MISSING_EXTRA) from None
    arguments = connect_arguments(settings)
    try:
        if "connection_name" not in arguments and "account" not in arguments:
            # the connector loads its default connection only when given no argument at all: name it
            from snowflake.connector.config_manager import CONFIG_MANAGER

            arguments["connection_name"] = CONFIG_MANAGER["default_connection_name"]
        connection = snowflake.connector.connect(**arguments)
    except Exception as exc:  # the connector's errors, and its config errors (a missing connections.toml)
        message = str(exc)
        for key in SECRET_ARGUMENTS:
            if arguments.get(key):
                message = message.replace(str(arguments[key]), "***")
        where = (f"connection {settings.connection!r} of connections.toml" if settings.connection else
                 "the SNOWFLAKE_* variables" if "account" in arguments else "the default connection")
        raise RunnerError(f"cannot connect to Snowflake with {where}: {message}") from None
    return ConnectorSession(connection)
