"""Every statement the SPCS runner sends: its exact text, its binds filled as the connector fills them, and no
value that can leave its literal, checked with Snowflake's lexer as sqlglot implements it.

sqlglot's snowflake dialect parses SELECT fully; EXECUTE JOB SERVICE, SHOW ... and DROP SERVICE it takes as
opaque commands, and DESCRIBE SERVICE it does not know. So each statement is also lexed, and its token
stream must be the template's with each `%s` one string token holding exactly the bound value.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlglot
from snowflake.connector.converter import SnowflakeConverter
from sqlglot.dialects.snowflake import Snowflake
from sqlglot.tokens import Token, TokenType

from jobgraph.runners import spcs_statements as statements
from jobgraph.runners.spcs_spec import SpcsSettings
from jobgraph.runners.spcs_statements import Statement, render

HOSTILE_TEXT = ["it's", "a\\'; DROP SERVICE x; --", "$$ end $$", "line\nbreak\r\n", "\\n", "tab\there", "'", "\\",
                "%s %(x)s %%", "é ✓ 日本", "--comment", "/* c */"]
HOSTILE_NAMES = ["a b", "x;DROP SERVICE y", "t'--", 'x"y', "1abc", "", "a\x00", "IDENTIFIER('x')", "x" * 256]
SETTINGS = SpcsSettings(warehouse="tutorial_warehouse", external_access_integrations=["eai_pypi", "eai_s3"])


def every_statement(spec: str = "spec: {}\n", comment: str = "jobgraph") -> list[Statement]:
    return [
        statements.execute_job_service("PR_STD_POOL_XS", "JG_0B5E3C1E_T_MYJOB_1_1", spec, SETTINGS, comment),
        statements.show_job_services("JG_0B5E3C1E_%"),
        statements.describe_service("JG_0B5E3C1E_T_MYJOB_1_1"),
        statements.show_service_containers("JG_0B5E3C1E_T_MYJOB_1_1"),
        statements.service_logs("JG_0B5E3C1E_T_MYJOB_1_1", "0", "main", 1000),
        statements.drop_service("JG_0B5E3C1E_T_MYJOB_1_1"),
        statements.show_compute_pools(),
    ]


def test_the_exact_texts() -> None:
    texts = [statement.sql for statement in every_statement()]
    assert texts == [
        "EXECUTE JOB SERVICE IN COMPUTE POOL IDENTIFIER(%s) NAME = IDENTIFIER(%s) ASYNC = TRUE "
        "QUERY_WAREHOUSE = IDENTIFIER(%s) COMMENT = %s EXTERNAL_ACCESS_INTEGRATIONS = (IDENTIFIER(%s), "
        "IDENTIFIER(%s)) FROM SPECIFICATION %s",
        "SHOW JOB SERVICES LIKE %s",
        "DESCRIBE SERVICE IDENTIFIER(%s)",
        "SHOW SERVICE CONTAINERS IN SERVICE JG_0B5E3C1E_T_MYJOB_1_1",
        "SELECT SYSTEM$GET_SERVICE_LOGS(%s, %s, %s, %s)",
        "DROP SERVICE IF EXISTS IDENTIFIER(%s)",
        "SHOW COMPUTE POOLS",
    ]
    assert every_statement()[0].params == ("PR_STD_POOL_XS", "JG_0B5E3C1E_T_MYJOB_1_1", "tutorial_warehouse",
                                           "jobgraph", "eai_pypi", "eai_s3", "spec: {}\n")


def test_optional_clauses_are_left_out_in_order() -> None:
    bare = statements.execute_job_service("P", "JG_X_1", "s", SpcsSettings())
    assert bare.sql == ("EXECUTE JOB SERVICE IN COMPUTE POOL IDENTIFIER(%s) NAME = IDENTIFIER(%s) ASYNC = TRUE "
                        "FROM SPECIFICATION %s")
    assert bare.params == ("P", "JG_X_1", "s")


def connector_fill(statement: Statement) -> str:
    """What snowflake-connector-python's pyformat binding sends: each value converted, escaped and quoted by
    its own SnowflakeConverter (as SnowflakeConnection._process_single_param does), then `%`-formatted."""
    if not statement.params:
        return statement.sql
    converter = SnowflakeConverter()
    filled = tuple(converter.quote(converter.escape(converter.to_snowflake(value))) for value in statement.params)
    return statement.sql % filled


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_render_is_what_the_connector_sends(text: str) -> None:
    for statement in [*every_statement(spec=text, comment=text), statements.show_job_services(text)]:
        assert render(statement) == connector_fill(statement)


def lexed(sql: str) -> list[Token]:
    """Snowflake's tokens for a statement (sqlglot lexes the body of EXECUTE/SHOW/DROP as one string: lex it apart)."""
    tokens = Snowflake().tokenize(sql)
    if (len(tokens) == 2 and tokens[0].token_type == TokenType.EXECUTE) or (tokens[0].text.upper() in ("SHOW", "DROP") \
            and len(tokens) == 2):
        return [tokens[0], *Snowflake().tokenize(sql[len(tokens[0].text):])]
    return tokens


def shape(tokens: list[Token]) -> list[tuple[str, str]]:
    return [(token.token_type.name, token.text.upper() if token.token_type != TokenType.STRING else token.text)
            for token in tokens]


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_no_value_leaves_its_literal(text: str) -> None:
    """The rendered statement lexes as the template with each bind one string token holding exactly the value."""
    for statement in [*every_statement(spec=text, comment=text), statements.show_job_services(text)]:
        template = lexed(statement.sql.replace("%s", "'\x01'"))
        expected = []
        values = iter(statement.params)
        for kind, token_text in shape(template):
            if kind == "STRING" and token_text == "\x01":
                value = next(values)
                kind, token_text = ("NUMBER", str(value)) if isinstance(value, int) else ("STRING", str(value))
            expected.append((kind, token_text))
        assert shape(lexed(render(statement))) == expected, render(statement)


def test_every_statement_sqlglot_knows_parses() -> None:
    for statement in every_statement(spec="spec:\n  containers: []\n", comment="it's"):
        if statement.sql.startswith("DESCRIBE SERVICE"):
            continue  # sqlglot's snowflake grammar has no DESCRIBE SERVICE; lexed above
        parsed = sqlglot.parse(render(statement), read="snowflake", error_level=sqlglot.ErrorLevel.RAISE)
        assert len(parsed) == 1


def test_the_log_query_parses_fully_with_its_values() -> None:
    statement = statements.service_logs("JG_X_1", "0", "main", 250)
    tree = sqlglot.parse_one(render(statement), read="snowflake", error_level=sqlglot.ErrorLevel.RAISE)
    assert isinstance(tree, sqlglot.exp.Select)
    call: Any = tree.expressions[0]
    assert call.name.upper() == "SYSTEM$GET_SERVICE_LOGS"
    assert [arg.this for arg in call.expressions] == ["JG_X_1", "0", "main", "250"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_identifiers_are_refused_by_every_statement(name: str) -> None:
    calls = [
        lambda: statements.execute_job_service(name, "JG_X_1", "s", SpcsSettings()),
        lambda: statements.execute_job_service("P", name, "s", SpcsSettings()),
        lambda: statements.describe_service(name),
        lambda: statements.show_service_containers(name),
        lambda: statements.service_logs(name, "0", "main", 1),
        lambda: statements.drop_service(name),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="not a valid Snowflake identifier"):
            call()


def test_settings_that_bypassed_validation_are_still_checked() -> None:
    forged = SpcsSettings.model_construct(warehouse="w; DROP DATABASE d", external_access_integrations=[])
    with pytest.raises(ValueError, match="not a valid Snowflake identifier"):
        statements.execute_job_service("P", "JG_X_1", "s", forged)
    forged = SpcsSettings.model_construct(warehouse=None, external_access_integrations=["ok", "x)--"])
    with pytest.raises(ValueError, match="not a valid Snowflake identifier"):
        statements.execute_job_service("P", "JG_X_1", "s", forged)


def test_render_refuses_a_nul_and_unknown_types() -> None:
    with pytest.raises(ValueError, match="NUL"):
        render(statements.show_job_services("a\x00"))
    with pytest.raises(TypeError):
        render(Statement("SELECT %s", (object(),)))


def test_the_emulator_can_read_the_service_of_show_containers() -> None:
    assert statements.service_name_of(statements.show_service_containers("JG_X_1")) == "JG_X_1"
    assert statements.service_name_of(statements.show_compute_pools()) is None
