"""Parameter values against their declared types, from text (`--param`) and from JSON (defaults, the API)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from jobgraph.config import Pipeline
from jobgraph.config.params import MAX_LIST_ITEMS, MAX_VALUE_CHARS, coerce, parse_assignments, resolve, with_defaults
from jobgraph.errors import ConfigError


@pytest.mark.parametrize(("kind", "text", "value"), [
    ("string", " a=b ", " a=b "), ("integer", "-12", -12), ("number", "2.5", 2.5), ("number", "3", 3),
    ("number", "1e3", 1000.0), ("boolean", "Yes", True), ("boolean", "off", False),
    ("date", "2024-02-29", "2024-02-29"),
    ("list", "a, b,,c", ["a", "b", "c"]), ("list", '[1, "x", null]', [1, "x", None]), ("list", "", []),
])
def test_values_from_text(kind: str, text: str, value: object) -> None:
    assert coerce(kind, text, from_text=True) == value


@pytest.mark.parametrize(("kind", "value", "message"), [
    ("integer", True, "expected an integer, got a boolean"), ("integer", 1.0, "expected an integer, got a number"),
    ("integer", "0x10", "'0x10' is not an integer"), ("number", float("inf"), "expected a finite number, got inf"),
    ("number", float("nan"), "expected a finite number, got nan"), ("string", "a\udcffb", "not UTF-8 text"),
    ("list", ["\ud800"], "not UTF-8 text"), ("list", [{"k": "\ud800"}], "not UTF-8 text"),
    ("number", "inf", "not a finite number"), ("boolean", 1, "expected true or false, got an integer"),
    ("date", "2023-02-29", "is not a date"), ("date", datetime(2024, 1, 1), "got a date and time"),
    ("string", 5, "expected a string, got an integer"), ("string", "a\x00b", "NUL byte"),
    ("list", {"a": 1}, "expected a list, got a mapping"), ("list", ["ok", "n\x00"], "NUL byte"),
    ("list", "[1,", "is not a JSON list"), ("list", [float("nan")], "not a finite number"),
    ("list", list(range(MAX_LIST_ITEMS + 1)), "at most 10,000 items"),
    ("string", "x" * (MAX_VALUE_CHARS + 1), "longer than 100,000 characters"),
    ("decimal", "1", "unknown parameter type 'decimal'"),
])
def test_values_of_the_wrong_type_are_refused(kind: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        coerce(kind, value)


def test_json_values_keep_their_types_and_dates_become_text() -> None:
    assert coerce("date", date(2024, 1, 31)) == "2024-01-31"
    assert coerce("list", [date(2024, 1, 31), {"k": [1]}]) == ["2024-01-31", {"k": [1]}]
    assert coerce("integer", "7") == 7  # text where a number is declared is read as --param would read it


def pipeline(*params: dict[str, Any]) -> Pipeline:
    return Pipeline.model_validate({"name": "p", "params": list(params),
                                    "jobs": [{"name": "a", "command": ["true"]}]})


def test_resolve_orders_by_declaration_and_reports_every_problem() -> None:
    declared = pipeline({"name": "day", "type": "date"}, {"name": "n", "type": "integer", "default": 2},
                        {"name": "tags", "type": "list", "default": ["x"]})
    assert resolve(declared, {"n": "5", "day": "2024-01-01"}, "f", from_text=True) == {
        "day": "2024-01-01", "n": 5, "tags": ["x"]}
    with pytest.raises(ConfigError) as caught:
        resolve(declared, {"n": "x", "../etc": "1", "": "2"}, "f.yaml", from_text=True)
    text = str(caught.value)
    assert "f.yaml, field '--param ../etc': unknown parameter '../etc'" in text
    assert "field '--param n': parameter 'n' is of type integer: 'x' is not an integer" in text
    assert "field '--param day': parameter 'day' (date) has no default" in text
    assert len(caught.value.problems) == 4


def test_parse_assignments_splits_at_the_first_equals() -> None:
    assert parse_assignments(["q=a=b", "e="]) == {"q": "a=b", "e": ""}
    with pytest.raises(ConfigError, match="'=x' is not NAME=VALUE"):
        parse_assignments(["=x"])


def test_with_defaults_changes_only_the_given_defaults() -> None:
    declared = pipeline({"name": "day", "type": "date"}, {"name": "n", "type": "integer", "default": 2})
    changed = with_defaults(declared, {"day": "2024-01-01"})
    assert [(p.name, p.default) for p in changed.params] == [("day", "2024-01-01"), ("n", 2)]
    assert declared.params[0].default is None and with_defaults(declared, {}) is declared
