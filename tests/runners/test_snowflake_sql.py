"""Snowflake's lexical rules: which names pass as identifiers, and how text becomes a literal that cannot end early."""

from __future__ import annotations

import pytest

from jobgraph.runners.snowflake_sql import (
    check_identifier,
    check_object_name,
    dollar_quoted,
    quote_identifier,
    string_literal,
)

HOSTILE = ["a b", "x;DROP TABLE t", "t'--", 'x"y', "1abc", "", "a.b", "é", "a-b", "a\x00b", "a\nb", "$x",
           "IDENTIFIER('x')", "x" * 256]


@pytest.mark.parametrize("name", ["t_myjob_1", "_x", "A$b9", "PR_STD_POOL_XS", "x" * 255])
def test_valid_identifiers_pass_unchanged(name: str) -> None:
    assert check_identifier(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_identifiers_are_refused_naming_them(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid Snowflake identifier") as caught:
        check_identifier(name)
    assert repr(name)[:40] in str(caught.value)


def test_object_names_take_up_to_three_identifiers() -> None:
    assert check_object_name("db.sch.my_secret") == "db.sch.my_secret"
    for bad in ("a.b.c.d", "a..b", "a.b;drop", ".a", "a.'b'"):
        with pytest.raises(ValueError, match="Snowflake object name"):
            check_object_name(bad)


def test_quote_identifier_upper_cases_and_doubles_quotes() -> None:
    assert quote_identifier("t_myjob_1") == '"T_MYJOB_1"'
    assert quote_identifier('a"b') == '"A""B"'
    for bad in ("", "a\x00", "x" * 256):
        with pytest.raises(ValueError):
            quote_identifier(bad)


def test_string_literal_escapes_quote_and_backslash() -> None:
    assert string_literal("it's") == "'it\\'s'"
    assert string_literal("a\\'; DROP TABLE t; --") == "'a\\\\\\'; DROP TABLE t; --'"
    assert string_literal("") == "''"
    with pytest.raises(ValueError, match="NUL"):
        string_literal("a\x00b")


def test_string_literal_never_ends_early() -> None:
    """Read back as Snowflake reads a string: the literal ends exactly at its last character."""
    for text in ["'", "\\", "\\'", "'\\", "a''b", "x\\\\'y", "\n'\r"]:
        literal = string_literal(text)
        index, out = 1, []
        while literal[index] != "'":
            if literal[index] == "\\":
                index += 1
            out.append(literal[index])
            index += 1
        assert index == len(literal) - 1
        assert "".join(out) == text


def test_dollar_quoted_refuses_what_would_end_it_early() -> None:
    assert dollar_quoted("spec:\n  a: '$x'\n") == "$$spec:\n  a: '$x'\n$$"
    for bad in ("a$$b", "ends with $", "$$", "nul\x00"):
        with pytest.raises(ValueError, match=r"\$\$"):
            dollar_quoted(bad)
