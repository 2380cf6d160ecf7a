"""Every statement the SPCS runner sends, as text with `%s` binds and the values apart: never SQL built from user text.

The connector's default paramstyle (pyformat) fills each `%s` on the client with the value escaped and
quoted; an identifier is bound the same way inside `IDENTIFIER(%s)` (as Prefect's SPCS worker does), and is
first checked to be a valid unquoted identifier, so a name can never carry SQL. The one statement whose
grammar takes no IDENTIFIER() for certain (`SHOW SERVICE CONTAINERS IN SERVICE`, whose documentation also
says quoted names are not supported there) gets the service name inline and unquoted, checked by
`check_identifier` (letters, digits, `_` and `$`: nothing that can end a name): only names jobgraph made
(`service_name`, upper-case) reach it.

`render` fills the binds as the connector does, for `jobgraph plan` and the parse tests; the emulator
recognises each statement by its text (the constants below) and reads the values from the binds.
Nothing here imports the connector.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from jobgraph.runners.snowflake_sql import check_identifier
from jobgraph.runners.spcs_spec import SpcsSettings


@dataclass(frozen=True)
class Statement:
    """One statement: its text with `%s` for each value, and the values in order."""

    sql: str
    params: tuple[object, ...] = ()


EXECUTE_JOB_SERVICE = "EXECUTE JOB SERVICE IN COMPUTE POOL IDENTIFIER(%s) NAME = IDENTIFIER(%s) ASYNC = TRUE"
"""The start of every submit; QUERY_WAREHOUSE, COMMENT, EXTERNAL_ACCESS_INTEGRATIONS and the spec follow."""

SHOW_JOB_SERVICES = "SHOW JOB SERVICES LIKE %s"
DESCRIBE_SERVICE = "DESCRIBE SERVICE IDENTIFIER(%s)"
SHOW_SERVICE_CONTAINERS = "SHOW SERVICE CONTAINERS IN SERVICE "
"""Followed by the service name, checked and unquoted (see the module's docstring)."""
SERVICE_LOGS = "SELECT SYSTEM$GET_SERVICE_LOGS(%s, %s, %s, %s)"
DROP_SERVICE = "DROP SERVICE IF EXISTS IDENTIFIER(%s)"
SHOW_COMPUTE_POOLS = "SHOW COMPUTE POOLS"


def execute_job_service(pool: str, name: str, spec_yaml: str, settings: SpcsSettings,
                        comment: str | None = None) -> Statement:
    """Start one attempt's job service, asynchronously (a jobgraph restart does not stop it), in Snowflake's
    clause order: options before `FROM SPECIFICATION`, the spec itself a bind."""
    sql = [EXECUTE_JOB_SERVICE]
    params: list[object] = [check_identifier(pool), check_identifier(name)]
    if settings.warehouse:
        sql.append("QUERY_WAREHOUSE = IDENTIFIER(%s)")
        params.append(check_identifier(settings.warehouse))
    if comment is not None:
        sql.append("COMMENT = %s")
        params.append(comment)
    if settings.external_access_integrations:
        integrations = [check_identifier(name) for name in settings.external_access_integrations]
        sql.append("EXTERNAL_ACCESS_INTEGRATIONS = (" + ", ".join("IDENTIFIER(%s)" for _ in integrations) + ")")
        params.extend(integrations)
    sql.append("FROM SPECIFICATION %s")
    params.append(spec_yaml)
    return Statement(" ".join(sql), tuple(params))


def show_job_services(like: str) -> Statement:
    """Every job service whose name matches `like` (a LIKE pattern, case-insensitive), in one round: columns
    name, status, compute_pool, comment, ..."""
    return Statement(SHOW_JOB_SERVICES, (like,))


def describe_service(name: str) -> Statement:
    """One service's row (name, status, ...); an error if it does not exist."""
    return Statement(DESCRIBE_SERVICE, (check_identifier(name),))


def show_service_containers(name: str) -> Statement:
    """A service's containers: status, message, instance_id, container_name, ... (why a job FAILED)."""
    return Statement(SHOW_SERVICE_CONTAINERS + check_identifier(name))


def service_logs(name: str, instance_id: str, container: str, lines: int) -> Statement:
    """The last `lines` lines of one container's log (gone once Snowflake reclaimed the node)."""
    return Statement(SERVICE_LOGS, (check_identifier(name), str(instance_id), container, int(lines)))


def drop_service(name: str) -> Statement:
    """Stop and remove a job service (a cancel); harmless if it is gone already."""
    return Statement(DROP_SERVICE, (check_identifier(name),))


def show_compute_pools() -> Statement:
    """The account's compute pools: name, state, instance_family, ..."""
    return Statement(SHOW_COMPUTE_POOLS)


def service_name_of(statement: Statement) -> str | None:
    """The service a SHOW SERVICE CONTAINERS statement is about (for the emulator), else None."""
    match = re.fullmatch(re.escape(SHOW_SERVICE_CONTAINERS) + r"([A-Za-z_][A-Za-z0-9_$]*)", statement.sql)
    return match[1].upper() if match and not statement.params else None


def escape_value(value: object) -> str:
    """A bind value as the connector's pyformat binding writes it into the text: a string single-quoted with
    `\\`, `'`, newline and carriage return escaped; numbers as they are; None as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if not isinstance(value, str):
        raise TypeError(f"cannot bind a {type(value).__name__}")
    if "\x00" in value:
        raise ValueError("a Snowflake string cannot hold a NUL byte (\\x00)")
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("'", "\\'")
    return f"'{escaped}'"


def render(statement: Statement) -> str:
    """The statement as Snowflake receives it: each `%s` filled as the connector fills it (for `plan`)."""
    if not statement.params:
        return statement.sql
    return statement.sql % tuple(escape_value(value) for value in statement.params)


def render_all(statements: Sequence[Statement]) -> str:
    """Statements as a script, one per line, each ended by `;`."""
    return "\n".join(render(statement) + ";" for statement in statements)
