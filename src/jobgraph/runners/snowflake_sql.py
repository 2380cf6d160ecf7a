"""Snowflake's lexical rules, in one place: which names are safe identifiers, and how text becomes a literal.

The SPCS runner never needs these to build a statement (every value is a bind, every identifier an
`IDENTIFIER(%s)`), but it checks each name it sends with `check_identifier`, and the exporter, which must
print a script a person runs, quotes with `quote_identifier`, `string_literal` and `dollar_quoted`.
Nothing here imports the connector.
"""

from __future__ import annotations

import re

MAX_IDENTIFIER = 255
"""Snowflake's longest identifier."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")


def check_identifier(name: str) -> str:
    """`name` if it is a valid unquoted Snowflake identifier (`[A-Za-z_][A-Za-z0-9_$]*`, at most 255), else a
    ValueError naming it: such a name needs no quoting and cannot carry SQL."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name) or len(name) > MAX_IDENTIFIER:
        raise ValueError(f"{name!r} is not a valid Snowflake identifier: use letters, digits, '_' and '$', "
                         f"starting with a letter or '_' (at most {MAX_IDENTIFIER} characters)")
    return name


def check_object_name(name: str) -> str:
    """`name` if it is an identifier or a qualified one (`db.schema.name`, each part an identifier), else a
    ValueError naming it."""
    parts = name.split(".") if isinstance(name, str) else [name]
    if len(parts) > 3:
        raise ValueError(f"{name!r} is not a Snowflake object name: at most database.schema.name")
    try:
        for part in parts:
            check_identifier(part)
    except ValueError:
        raise ValueError(f"{name!r} is not a valid Snowflake object name: each part (database.schema.name) is "
                         "letters, digits, '_' and '$', starting with a letter or '_'") from None
    return name


def quote_identifier(name: str) -> str:
    """`name` double-quoted, upper-cased as Snowflake resolves an unquoted name (so `"T_MYJOB_1"` is the object
    `t_myjob_1` names), any `"` doubled; refused if empty, too long or holding a NUL."""
    if not isinstance(name, str) or not name or len(name) > MAX_IDENTIFIER or "\x00" in name:
        raise ValueError(f"{name!r} cannot be a Snowflake identifier (empty, longer than {MAX_IDENTIFIER} "
                         "characters, or holding a NUL)")
    return '"' + name.upper().replace('"', '""') + '"'


def string_literal(text: str) -> str:
    """`text` as a single-quoted Snowflake string literal: `\\` and `'` escaped; a NUL refused (Snowflake
    would end the string there)."""
    if "\x00" in text:
        raise ValueError("a Snowflake string cannot hold a NUL byte (\\x00)")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def dollar_quoted(text: str) -> str:
    """`text` as a `$$...$$` constant (no escapes inside, so a spec or a script reads as written); refused if
    it holds `$$` or ends with `$` (either would end the constant early), or a NUL."""
    if "$$" in text or text.endswith("$") or "\x00" in text:
        raise ValueError("text holding '$$', ending with '$' or holding a NUL cannot be a $$-quoted constant")
    return f"$${text}$$"
