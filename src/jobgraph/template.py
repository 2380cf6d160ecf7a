"""Placeholders in a job's args and env: `{{ params.date }}`, `{{ item }}`, `{{ scheduled_time }}`.

Not Jinja: a job's args are data handed to a program, so a placeholder can only name a value (a
dotted path into the values a run provides) or be a quoted literal (`{{ '{{' }}` writes `{{`).
No expressions, filters or code: nothing in a pipeline file can make jobgraph compute, and every
name can be checked against the pipeline before anything runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*\Z")
_LITERAL = re.compile(r"'([^']*)'\Z|\"([^\"]*)\"\Z")


class TemplateError(ValueError):
    """A placeholder that is not a name or a literal, or names a value the run does not have."""


def has_placeholders(text: str) -> bool:
    """Whether `text` needs rendering at all (the fast path for the usual job)."""
    return "{{" in text


def references(text: str) -> list[tuple[str, ...]]:
    """The dotted names `text` refers to, in order, as tuples (`params.date` -> ("params", "date"))."""
    return [path for path in _parts(text) if isinstance(path, tuple)]


def render(text: str, values: Mapping[str, object]) -> str:
    """`text` with each placeholder replaced by its value: strings as they are, anything else as JSON."""
    if not has_placeholders(text):
        return text
    _parts(text)
    pieces: list[str] = []
    position = 0
    for match in PLACEHOLDER.finditer(text):
        pieces.append(text[position:match.start()])
        pieces.append(_value(_parse(match.group(1)), values))
        position = match.end()
    pieces.append(text[position:])
    return "".join(pieces)


def render_all(texts: Iterable[str], values: Mapping[str, object]) -> list[str]:
    """`render` over a job's args."""
    return [render(text, values) for text in texts]


def _parts(text: str) -> list[tuple[str, ...] | str]:
    if not has_placeholders(text):
        return []
    found = [_parse(match.group(1)) for match in PLACEHOLDER.finditer(text)]
    rest = PLACEHOLDER.sub("", text)
    if "{{" in rest:
        raise TemplateError("'{{' without a closing '}}' (write {{ '{{' }} for a literal '{{')")
    return found


def _parse(inner: str) -> tuple[str, ...] | str:
    """A placeholder's inside: a dotted path (a tuple) or a quoted literal (a str)."""
    inner = inner.strip()
    literal = _LITERAL.match(inner)
    if literal:
        return literal.group(1) if literal.group(1) is not None else literal.group(2)
    if not _PATH.match(inner):
        shown = inner if len(inner) <= 40 else inner[:40] + "..."
        raise TemplateError(f"'{{{{ {shown} }}}}' is not a name like params.date or item, nor a quoted literal")
    return tuple(inner.split("."))


def _value(path: tuple[str, ...] | str, values: Mapping[str, object]) -> str:
    if isinstance(path, str):
        return path
    current: object = values
    for depth, key in enumerate(path):
        if isinstance(current, Mapping) and key in current:
            current = current[key]
        elif isinstance(current, list | tuple) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            raise TemplateError(f"'{'.'.join(path[:depth + 1])}' has no value here")
    if isinstance(current, str):
        return current
    return json.dumps(current, separators=(",", ":"), ensure_ascii=False)
