"""YAML read exactly as PyYAML's safe loader reads it, but built several times faster.

PyYAML's libyaml loader parses in C, then builds every value through a generic, generator-based
constructor in Python: on a 10,000-job file that is most of the time. Here libyaml (or PyYAML's own
parser where the wheel lacks it) still parses, composes and resolves every tag; a plain recursive
loop builds what almost every pipeline holds: strings, lists and mappings with string keys. Every
other node (numbers, booleans, dates, explicit tags, merge keys, complex keys) goes to PyYAML's
safe constructor itself, so the result, its errors and its safety (no tag that builds an object)
are PyYAML's. Other parsers were measured (ruamel.yaml's C loader, rapidyaml, yaml-rs): the fast
ones read YAML 1.2, which reads `yes`, `010` or `1e3` differently from PyYAML's YAML 1.1.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

BASE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML was built with it, else the pure-Python one: same results."""

_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


class _Loader(BASE_LOADER):  # type: ignore[valid-type,misc]
    """The safe loader, with a value its tag cannot read reported at its place rather than as a bare ValueError."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError):
            if node.__class__ is not ScalarNode:
                raise
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise ConstructorError(None, None, f"cannot read {node.value!r} as {tag}", node.start_mark) from None


class _Unusual(Exception):
    """A node the fast loop leaves to PyYAML: the whole document is then built by PyYAML's constructor."""


def safe_load(text: str) -> Any:
    """What `yaml.safe_load(text)` returns (the same values, the same errors), built faster."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            return _Builder(loader).build(node)
        except (_Unusual, RecursionError):
            return loader.construct_document(node)
    finally:
        loader.dispose()


class _Builder:
    """Builds plain strings, lists and string-keyed mappings; an alias gets the object its anchor built."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.built: dict[Node, Any] = {}

    def build(self, node: Node) -> Any:
        kind = node.__class__
        if kind is ScalarNode:
            if node.tag == _STR:
                return node.value
            return self.loader.construct_object(node, deep=True)
        if node in self.built:
            return self.built[node]
        if kind is SequenceNode and node.tag == _SEQ:
            items: list[Any] = []
            self.built[node] = items
            items.extend(map(self.build, node.value))
            return items
        if kind is MappingNode and node.tag == _MAP:
            mapping: dict[Any, Any] = {}
            self.built[node] = mapping
            for key, value in node.value:
                if key.__class__ is not ScalarNode or key.tag != _STR:
                    raise _Unusual
                mapping[key.value] = self.build(value)
            return mapping
        raise _Unusual
