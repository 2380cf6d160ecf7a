"""Placeholders: names and literals only, every bad one refused with what is wrong."""

from __future__ import annotations

import pytest

from jobgraph.template import TemplateError, references, render, render_all

VALUES = {"params": {"date": "2026-01-02", "n": 3, "tags": ["a", "b"]}, "item": {"id": 7, "name": "x"}}


def test_names_are_replaced_and_non_strings_become_json() -> None:
    assert render("--date={{ params.date }}", VALUES) == "--date=2026-01-02"
    assert render("{{params.n}}-{{ params.tags }}", VALUES) == '3-["a","b"]'
    assert render("{{ item.name }}/{{ params.tags.1 }}", VALUES) == "x/b"
    assert render_all(["plain", "{{ item }}"], VALUES) == ["plain", '{"id":7,"name":"x"}']


def test_text_without_placeholders_is_returned_as_is() -> None:
    text = "select '}}' from t"
    assert render(text, {}) is text


def test_a_quoted_literal_writes_braces() -> None:
    assert render("{{ '{{' }} x }}", {}) == "{{ x }}"
    assert render('{{ "a b" }}', {}) == "a b"


@pytest.mark.parametrize("text", ["{{ params.date", "{{ 1 + 1 }}", "{{ __import__('os') }}", "{{ }}",
                                  "{{ params..x }}"])
def test_anything_but_a_name_or_literal_is_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        references(text)
    with pytest.raises(TemplateError):
        render(text, VALUES)


def test_unknown_names_are_refused_naming_the_missing_part() -> None:
    with pytest.raises(TemplateError, match=r"'params\.day' has no value"):
        render("{{ params.day }}", VALUES)
    with pytest.raises(TemplateError, match="'item' has no value"):
        render("{{ item }}", {"params": {}})


def test_references_lists_the_paths() -> None:
    assert references("{{ params.a }}{{ 'x' }}{{ item.b }}") == [("params", "a"), ("item", "b")]
