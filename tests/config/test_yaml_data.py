"""The fast YAML loader reads every file exactly as PyYAML's pure-Python safe loader does: same values, same errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobgraph.config import load
from jobgraph.config.yaml_data import BASE_LOADER, safe_load
from jobgraph.errors import ConfigError
from tests.conftest import SEED

EDGE_CASES = {
    "anchors and aliases": "base: &b {image: sh, args: [x]}\njobs: [*b, *b]\nlist: &l [1, 2]\nagain: *l\n",
    "merge keys": "base: &b {image: sh, retries: 2}\njob:\n  <<: *b\n  name: a\n  retries: 3\n",
    "merge of a list of mappings": "a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n",
    "YAML 1.1 booleans": "a: yes\nb: No\nc: on\nd: OFF\ne: y\nf: n\ng: true\nh: 'yes'\n",
    "YAML 1.1 numbers": "a: 010\nb: 0o10\nc: 0x1f\nd: 1_000\ne: 1:20\nf: 1e3\ng: 1.5e+3\nh: .inf\ni: -.Inf\n"
                        "j: 0b101\nk: +12\nl: 09\nm: 1.\n",
    "nulls": "a: ~\nb: null\nc:\nd: Null\ne: ''\nf: [~, null, '']\n",
    "timestamps": "a: 2001-12-14t21:59:43.10-05:00\nb: 2002-12-14\nc: '2002-12-14'\n",
    "explicit tags": "a: !!str 5\nb: !!int '7'\nc: !!float 1\nd: !!binary aGVsbG8=\ne: !!set {x, y}\n"
                     "f: !!omap [x: 1, y: 2]\ng: !!pairs [x: 1, x: 2]\nh: !!bool yes\ni: !!null ''\n",
    "quoting and block styles": "a: 'it''s'\nb: \"tab\\there\\u00e9\"\nc: |\n  line one\n  line two\nd: >\n"
                                "  folded\n  text\n\n  kept\ne: |-\n  stripped\nf: plain\n  continued\n",
    "tabs inside quoted values": "a: \"x\\ty\"\nb: 'x\ty'\nc: |\n  x\ty\n",
    "non-string keys": "1: one\ntrue: yes\n~: nothing\n2.5: x\n2001-01-01: date\n",
    "duplicate keys keep the last value": "a: 1\nb: 2\na: 3\n",
    "a recursive alias": "a: &r [1, *r]\n",
    "unicode and a byte order mark": "\ufeffname: caf\u00e9\nemoji: \U0001f600\n",
    "a bare scalar": "just text\n",
    "an empty document": "---\n...\n",
    "nested flow collections": "a: {b: [c, {d: e}], f: [[1, 2], []], g: {}}\n",
    "values that look special when unquoted": "a: '010'\nb: \"yes\"\nc: '~'\nd: '1:20'\ne: '<<'\n",
}

LIBYAML_READS_TABS = {
    "a tab inside a plain value": "c: x\ty\n",
    "a tab after a comma": "d: [a,\tb]\n",
    "a tab after a colon": "e:\tx\n",
    "a trailing tab": "f: x\t\n",
}
"""Tabs as separators: libyaml reads them (as jobgraph always did where the wheel has libyaml), PyYAML's Python
scanner refuses them. A parser difference the fast loop neither adds nor removes."""

BAD_INPUTS = {
    "bad indentation": "name: p\njobs:\n  - name: a\n   image: [x\n",
    "a tab as indentation": "name: p\njobs:\n\t- name: a\n",
    "an unclosed flow list": "a: [1, 2\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "an undefined alias": "a: *nowhere\n",
    "a Python object tag": "a: !!python/object/apply:os.system [echo hacked]\n",
    "a Python name tag": "a: !!python/name:os.system\n",
    "an unknown local tag": "a: !custom 1\n",
    "a list where a key belongs": "? - x\n: [a]\n[a]: b\n",
    "a merge of a scalar": "a:\n  <<: 1\n",
    "an unhashable key": "? {a: 1}\n: x\n",
    "a mapping tagged as a string": "a: !!str {b: 1}\n",
}


def _reference(text: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> tuple[str, Any]:
    """PyYAML's safe load (pure Python by default): ("ok", value) or ("error", its type and message)."""
    try:
        return "ok", yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        return "error", (type(exc).__name__, _without_source(str(exc)))


def _fast(text: str) -> tuple[str, Any]:
    try:
        return "ok", safe_load(text)
    except yaml.YAMLError as exc:
        return "error", (type(exc).__name__, _without_source(str(exc)))


def _without_source(message: str) -> str:
    """libyaml and PyYAML's Python reader quote the source differently ("<unicode string>" vs a snippet)."""
    return "\n".join(line for line in message.splitlines() if not line.startswith(("    ", "  in ")))


def _marks(text: str, read: Callable[[str], Any]) -> tuple[int, int] | None:
    try:
        read(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        return (mark.line, mark.column) if mark else None
    return None


@pytest.mark.parametrize("text", list(EDGE_CASES.values()), ids=list(EDGE_CASES))
def test_edge_cases_read_as_pyyaml_reads_them(text: str) -> None:
    expected = _reference(text)
    assert expected[0] == "ok"
    got = _fast(text)
    if text.startswith("a: &r"):  # a list that holds itself: compare its shape, == would recurse forever
        assert got[0] == "ok" and got[1]["a"][0] == 1 and got[1]["a"][1] is got[1]["a"]
        return
    assert got == expected
    assert repr(got[1]) == repr(expected[1])  # same types too: 1 == 1.0 == True would hide a difference


@pytest.mark.parametrize("text", list(LIBYAML_READS_TABS.values()), ids=list(LIBYAML_READS_TABS))
def test_tabs_read_as_pyyaml_with_libyaml_reads_them(text: str) -> None:
    assert _fast(text) == _reference(text, BASE_LOADER)
    if BASE_LOADER is not yaml.SafeLoader:
        assert _fast(text)[0] == "ok" and _reference(text)[0] == "error"


@pytest.mark.parametrize("text", [*EDGE_CASES.values(), *BAD_INPUTS.values()], ids=[*EDGE_CASES, *BAD_INPUTS])
def test_the_fast_loop_builds_what_pyyaml_builds_from_the_same_parser(text: str) -> None:
    if text.startswith("a: &r"):
        return  # compared by shape above
    assert _fast(text) == _reference(text, BASE_LOADER)


@pytest.mark.parametrize("text", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs_fail_as_pyyaml_fails(text: str) -> None:
    """The same error; libyaml words parser errors its own way, so the words are compared for PyYAML's own."""
    expected = _reference(text)
    assert expected[0] == "error", expected
    got = _fast(text)
    assert got[0] == "error" and got[1][0] == expected[1][0]
    if expected[1][0] == "ConstructorError":
        assert got == expected


@pytest.mark.parametrize("text", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_errors_point_at_the_same_place(text: str) -> None:
    assert _marks(text, safe_load) == _marks(text, yaml.safe_load) is not None


def test_aliases_share_one_object_as_in_pyyaml() -> None:
    data = safe_load(EDGE_CASES["anchors and aliases"])
    assert data["jobs"][0] is data["jobs"][1] is data["base"] and data["again"] is data["list"]


def test_every_example_file_reads_the_same() -> None:
    files = sorted(SEED.parent.rglob("*.y*ml"))
    assert files
    for file in files:
        text = file.read_text()
        assert _fast(text) == _reference(text), file


def test_a_generated_pipeline_of_many_jobs_reads_the_same() -> None:
    document = {"name": "big", "images": {"img": ["true"]}, "defaults": {"retry_delay": "1m", "timeout": 30},
                "jobs": [{"name": f"t_{i}", "image": "img", "after": [f"t_{i - 1}"] if i else [], "retries": i % 3,
                          "env": {"N": str(i), "FLAG": "yes"}, "args": ["--x", "010", 1.5]} for i in range(500)]}
    text = yaml.safe_dump(document)
    assert safe_load(text) == document == _reference(text)[1]
    assert safe_load(json.dumps(document)) == document  # JSON is YAML too


def test_nesting_too_deep_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: p\njobs: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}:") and "invalid YAML" in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("name: p\njobs:\n  - retries: !!int abc\n", ":3:14: invalid YAML: cannot read 'abc' as !!int"),
    ("name: p\nwhen: !!timestamp tomorrow\n", ":2:7: invalid YAML: cannot read 'tomorrow' as !!timestamp"),
    ("name: p\nok: !!bool maybe\n", ":2:5: invalid YAML: cannot read 'maybe' as !!bool"),
    ("name: p\nn: !!float x\n", ":2:4: invalid YAML: cannot read 'x' as !!float"),
])
def test_a_value_its_tag_cannot_read_is_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    """PyYAML itself raises a bare ValueError or AttributeError here, which reached the user as a traceback."""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}{expected}"


@pytest.mark.parametrize(("text", "where"), [
    (BAD_INPUTS["bad indentation"], ":4:"),
    (BAD_INPUTS["a tab as indentation"], ":3:1:"),
    (BAD_INPUTS["a Python object tag"], ":1:4:"),
])
def test_a_bad_file_names_the_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}{where}") and "invalid YAML" in str(caught.value)
