"""Reading exported Snowflake SQL back the way Snowflake's lexer reads it (sqlglot's snowflake dialect).

sqlglot parses CREATE TABLE, INSERT and SELECT into trees, but CREATE/ALTER/DROP TASK and EXECUTE JOB SERVICE
only as an opaque `Command`. For those, the statement is read token by token with sqlglot's Snowflake
tokenizer, against the clause order of Snowflake's CREATE TASK grammar: every identifier must come back as
one quoted identifier, every value as one string or number, the specification as one `$$` constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot.dialects.snowflake import Snowflake
from sqlglot.tokens import Token, TokenType

TASK_CLAUSES = ("WAREHOUSE", "USER_TASK_MANAGED_INITIAL_WAREHOUSE_SIZE", "SCHEDULE", "CONFIG",
                "ALLOW_OVERLAPPING_EXECUTION", "USER_TASK_TIMEOUT_MS", "SUSPEND_TASK_AFTER_NUM_FAILURES",
                "ERROR_INTEGRATION", "SUCCESS_INTEGRATION", "LOG_LEVEL", "COMMENT", "FINALIZE",
                "TASK_AUTO_RETRY_ATTEMPTS")
"""CREATE TASK's parameters in the order the grammar lists them (docs.snowflake.com/sql-reference/sql/create-task)."""

JOB_SERVICE_OPTIONS = ("QUERY_WAREHOUSE", "COMMENT", "EXTERNAL_ACCESS_INTEGRATIONS")


def tokens(sql: str) -> list[Token]:
    """Snowflake's tokens of `sql` (comments dropped).

    sqlglot's tokenizer takes everything after a leading EXECUTE as one opaque string (it only knows EXECUTE as
    a command): a statement that starts with EXECUTE has the rest tokenized on its own, so each of its parts is
    read as Snowflake's lexer reads it.
    """
    tokenizer = Snowflake().tokenizer()
    head, _, rest = sql.partition(" ")
    if head.upper() == "EXECUTE":
        return [*tokenizer.tokenize(head), *Snowflake().tokenizer().tokenize(rest)]
    return list(tokenizer.tokenize(sql))


@dataclass
class Task:
    """A CREATE OR REPLACE TASK statement, read back."""

    name: str
    clauses: dict[str, Token] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)
    body: str = ""


@dataclass
class JobService:
    """An EXECUTE JOB SERVICE statement (synchronous: no NAME, no ASYNC), read back."""

    pool: str
    options: dict[str, list[Token]] = field(default_factory=dict)
    specification: Token | None = None


def _word(token: Token) -> str:
    return token.text.upper()


def read_task(sql: str) -> Task:
    """The task's name, clauses (in grammar order, each once), AFTER list and body; AssertionError otherwise."""
    stream = tokens(sql)
    assert [_word(t) for t in stream[:4]] == ["CREATE", "OR", "REPLACE", "TASK"], sql
    assert stream[4].token_type == TokenType.IDENTIFIER, sql
    task, position, last = Task(stream[4].text), 5, -1
    while _word(stream[position]) in TASK_CLAUSES:
        name = _word(stream[position])
        order = TASK_CLAUSES.index(name)
        assert order > last, f"{name} out of Snowflake's order in {sql}"
        last = order
        assert stream[position + 1].token_type == TokenType.EQ, sql
        task.clauses[name] = stream[position + 2]
        position += 3
    if _word(stream[position]) == "AFTER":
        position += 1
        while True:
            assert stream[position].token_type == TokenType.IDENTIFIER, sql
            task.after.append(stream[position].text)
            position += 1
            if stream[position].token_type != TokenType.COMMA:
                break
            position += 1
    assert stream[position].token_type == TokenType.ALIAS, f"expected AS at {stream[position]} in {sql}"
    task.body = sql[stream[position].end + 1:].strip()
    return task


def read_job_service(sql: str) -> JobService:
    """The pool, options and the one `$$` specification of a synchronous EXECUTE JOB SERVICE."""
    stream = tokens(sql)
    words = [_word(t) for t in stream[:6]]
    assert words == ["EXECUTE", "JOB", "SERVICE", "IN", "COMPUTE", "POOL"], sql
    assert stream[6].token_type == TokenType.IDENTIFIER, sql
    service, position = JobService(stream[6].text), 7
    while _word(stream[position]) in JOB_SERVICE_OPTIONS:
        name = _word(stream[position])
        assert name not in service.options and stream[position + 1].token_type == TokenType.EQ, sql
        end = position + 3
        if stream[position + 2].token_type == TokenType.L_PAREN:
            while stream[end - 1].token_type != TokenType.R_PAREN:
                end += 1
        service.options[name] = stream[position + 2:end]
        position = end
    assert [_word(t) for t in stream[position:position + 2]] == ["FROM", "SPECIFICATION"], sql
    service.specification = stream[position + 2]
    assert len(stream) == position + 3, f"something follows the specification in {sql}"
    return service


def script_statements(script: str) -> list[str]:
    """The statements of a whole script as printed (comments before each dropped), split where Snowflake's lexer
    finds a `;` (one inside a string, a `$$` constant or a comment is no end)."""
    found, start = [], 0
    for token in Snowflake().tokenizer().tokenize(script):
        if token.token_type == TokenType.SEMICOLON:
            lines = script[start:token.start].strip().splitlines()
            while lines and lines[0].startswith("--"):
                lines.pop(0)
            found.append("\n".join(lines))
            start = token.end + 1
    return found
