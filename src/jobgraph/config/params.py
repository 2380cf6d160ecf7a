"""Run parameters: a pipeline declares them (name, type, default, description), a run gets their values.

Values come typed from the file (defaults) and the HTTP API (JSON), or as text from `--param name=value`;
either way each is checked against its declared type before anything runs, so a job never sees a value
its pipeline did not promise. The values a run ran with are recorded in the store (runs.params): a
secret must never be one of them (`secrets:` passes those, unrecorded), and `secret_problems` refuses it.

The placeholders of every job (`{{ params.date }}`, `{{ scheduled_time }}`) are checked here too, at load,
against the names a run provides, so a typo fails `validate`, not the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal

from jobgraph.errors import ConfigError, Problem, did_you_mean
from jobgraph.template import TemplateError, has_placeholders, references

if TYPE_CHECKING:
    from jobgraph.config.model import Job, Pipeline

ParamType = Literal["string", "integer", "number", "boolean", "date", "list"]
PARAM_TYPES: tuple[str, ...] = ("string", "integer", "number", "boolean", "date", "list")

ROOTS = frozenset({"params", "scheduled_time", "run_id", "pipeline", "job", "attempt", "item"})
"""The names a placeholder may start with: what engine/attempt.py's `Attempts.template_values` provides."""

MAX_VALUE_CHARS = 100_000
"""The longest value (as JSON) a parameter takes: it becomes an argument or an environment value."""
MAX_LIST_ITEMS = 10_000
"""The most items a list parameter holds (fan-out's hard cap on copies is the same)."""

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def coerce(kind: str, value: Any, from_text: bool = False) -> object:
    """`value` as a parameter of type `kind`, or ValueError saying what was expected.

    `from_text`: the value was typed on a command line, so `5`, `true` or `a,b` are read as the type
    asks; a JSON value (a default, the API's body) must already have its type, except that text
    (a quoted default) is read the same way.
    """
    if from_text or (isinstance(value, str) and kind != "string"):
        value = _from_text(kind, str(value))
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_kind(value)}")
        checked: object = _no_nul(value)
    elif kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_kind(value)}")
        checked = value
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value}")
        checked = value
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_kind(value)}")
        checked = value
    elif kind == "date":
        checked = _date(value)
    elif kind == "list":
        checked = _list(value)
    else:
        raise ValueError(f"unknown parameter type {kind!r}; the types are {', '.join(PARAM_TYPES)}")
    shown = json.dumps(checked, ensure_ascii=False)
    if len(shown) > MAX_VALUE_CHARS:
        raise ValueError(f"the value is longer than {MAX_VALUE_CHARS:,} characters")
    try:  # bytes a command line took with surrogateescape, or a lone surrogate JSON spelled: no store holds them
        shown.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the value is not UTF-8 text") from None
    return checked


def _from_text(kind: str, text: str) -> object:
    stripped = text.strip()
    if kind == "integer":
        try:
            return int(stripped, 10)
        except ValueError:
            raise ValueError(f"{_shown(text)} is not an integer") from None
    if kind == "number":
        try:
            number = float(stripped)
        except ValueError:
            raise ValueError(f"{_shown(text)} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{_shown(text)} is not a finite number")
        return int(number) if number.is_integer() and "." not in stripped and "e" not in stripped.lower() \
            else number
    if kind == "boolean":
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise ValueError(f"{_shown(text)} is not true or false")
    if kind == "list":
        if stripped.startswith("["):
            try:
                return json.loads(stripped)
            except (json.JSONDecodeError, RecursionError):
                raise ValueError(f"{_shown(text)} is not a JSON list") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def _date(value: Any) -> str:
    if isinstance(value, datetime):
        raise ValueError("expected a date such as 2024-01-31, got a date and time")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            raise ValueError(f"{_shown(value)} is not a date such as 2024-01-31") from None
    raise ValueError(f"expected a date such as 2024-01-31, got {_kind(value)}")


def _list(value: Any) -> list[object]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list, got {_kind(value)}")
    if len(value) > MAX_LIST_ITEMS:
        raise ValueError(f"a list parameter holds at most {MAX_LIST_ITEMS:,} items, got {len(value):,}")
    items: list[object] = []
    for item in value:
        if isinstance(item, date):
            item = item.isoformat()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("a list item is not a finite number")
        if isinstance(item, str):
            _no_nul(item)
        elif not isinstance(item, int | float | bool | dict | list) and item is not None:
            raise ValueError(f"a list item is {_kind(item)}, not a JSON value")
        items.append(item)
    try:
        json.dumps(items, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        raise ValueError("the list holds something that is not a JSON value") from None
    return items


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("contains a NUL byte (\\x00), which no command line or environment can carry")
    return text


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), f"a {type(value).__name__}")


def parse_assignments(texts: Iterable[str], where: str = "--param") -> dict[str, str]:
    """`["date=2024-01-31", "n=5"]` as a mapping; ConfigError for text without `=` or a name given twice."""
    given: dict[str, str] = {}
    problems = []
    for text in texts:
        name, equals, value = text.partition("=")
        name = name.strip()
        if not equals or not name:
            problems.append(Problem(f"{_shown(text)} is not NAME=VALUE", field=where))
        elif name in given:
            problems.append(Problem(f"parameter '{name}' is given twice", field=_field(where, name)))
        else:
            given[name] = value
    if problems:
        raise ConfigError("the command line", problems)
    return given


def given_values(pipeline: Pipeline, given: Mapping[str, object], source: str, from_text: bool = False,
                 where: str = "--param") -> dict[str, object]:
    """The given values, each as its parameter's type; ConfigError for an unknown name or a value of the wrong type."""
    values, problems = _given(pipeline, given, from_text, where)
    if problems:
        raise ConfigError(source, problems)
    return values


def _given(pipeline: Pipeline, given: Mapping[str, object], from_text: bool,
           where: str) -> tuple[dict[str, object], list[Problem]]:
    declared = {param.name: param for param in pipeline.params}
    problems: list[Problem] = []
    for name in given:
        if name not in declared:
            known = f"; its parameters are {', '.join(declared)}" if declared else "; it declares no parameters"
            shown = name if len(name) <= 60 else name[:60] + "..."
            problems.append(Problem(f"unknown parameter '{shown}'{did_you_mean(name, declared)}: pipeline "
                                    f"{pipeline.name} has no such parameter{known}", field=_field(where, shown)))
    values: dict[str, object] = {}
    for name, param in declared.items():
        if name in given:
            try:
                values[name] = coerce(param.type, given[name], from_text)
            except ValueError as exc:
                problems.append(Problem(f"parameter '{name}' is of type {param.type}: {exc}",
                                        field=_field(where, name)))
    return values, problems


def _field(where: str, name: str) -> str:
    """`--param NAME` on a command line, `params.NAME` in the API's body."""
    return f"{where} {name}" if where.startswith("--") else f"{where}.{name}"


def resolve(pipeline: Pipeline, given: Mapping[str, object] | None, source: str, from_text: bool = False,
            where: str = "--param") -> dict[str, object]:
    """Every declared parameter's value for one run: given ones (checked against their type), else defaults.

    ConfigError (in `source`, each problem in field `--param NAME`) for an unknown name, a value of the wrong
    type, or a parameter with no default that was not given; nothing is run.
    """
    given = given or {}
    values, problems = _given(pipeline, given, from_text, where)
    for name, param in ((param.name, param) for param in pipeline.params):
        if name in given:
            continue
        if param.default is not None:
            values[name] = param.default
        else:
            problems.append(Problem(f"parameter '{name}' ({param.type}) has no default: give it with "
                                    f"--param {name}=VALUE", field=_field(where, name)))
    if problems:
        raise ConfigError(source, problems)
    return {param.name: values[param.name] for param in pipeline.params}


def with_defaults(pipeline: Pipeline, values: Mapping[str, object]) -> Pipeline:
    """The pipeline with these values as its parameters' defaults (`deploy --param`: what scheduled runs use)."""
    if not values:
        return pipeline
    params = tuple(param.model_copy(update={"default": values[param.name]}) if param.name in values else param
                   for param in pipeline.params)
    return pipeline.model_copy(update={"params": params})


def secret_problems(values: Mapping[str, object], secrets: Mapping[str, str]) -> list[Problem]:
    """A parameter whose value holds a secret's value: params are recorded in the store, secrets never are."""
    problems = []
    for name, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        for secret, secret_value in secrets.items():
            if secret_value and secret_value in text:
                problems.append(Problem(f"the value of parameter '{name}' holds the value of secret {secret}: "
                                        "parameters are recorded in the store; pass a secret with a job's "
                                        "`secrets:` instead", field=f"--param {name}"))
                break
    return problems


def params_text(values: Mapping[str, object]) -> str:
    """The values as the store records them (runs.params): one JSON object."""
    return json.dumps(dict(values), ensure_ascii=False, separators=(",", ":"))


def job_texts(job: Job) -> Iterable[tuple[str, str]]:
    """(field, text) of each text of a job that placeholders may appear in: command, args, env values."""
    for index, text in enumerate(job.command or ()):
        yield f"command.{index}", text
    for index, text in enumerate(job.args):
        yield f"args.{index}", text
    for name, text in job.env.items():
        yield f"env.{name}", text


def job_references(job: Job, problems: list[Problem]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(field, dotted name) of each placeholder in the job's command, args and env; a text whose placeholders
    do not parse adds its problem (job and field named) to `problems` instead."""
    for field, text in job_texts(job):
        if not has_placeholders(text):
            continue
        try:
            found = references(text)
        except TemplateError as exc:
            problems.append(Problem(str(exc), job=job.name, field=field))
            continue
        for path in found:
            yield field, path


def needs_rendering(job: Job) -> bool:
    """Whether any text of the job holds a placeholder (one substring test per text, no call per text): the
    engine renders only such jobs, and only theirs are parsed here."""
    for texts in (job.args, job.env.values(), job.command or ()):
        for text in texts:
            if "{{" in text:
                return True
    return False


def template_problems(pipeline: Pipeline) -> list[Problem]:
    """Every placeholder of every job parses and names what a run provides (a declared param, scheduled_time...).

    Only texts with `{{` are parsed, so a 10,000-job file without placeholders costs a substring test per text.
    """
    declared = {param.name: param for param in pipeline.params}
    secrets = {name.casefold() for job in pipeline.all_jobs() for name in job.secrets}
    problems = [Problem(f"parameter '{name}' has the name of a secret: parameters are recorded in the store, "
                        "secrets never are; pass the secret with `secrets:` only", field=f"params.{name}")
                for name in declared if name.casefold() in secrets]
    for job in pipeline.all_jobs():
        if not needs_rendering(job):
            continue
        for field, path in job_references(job, problems):
            problem = _reference_problem(path, declared)
            if problem:
                problems.append(Problem(problem, job=job.name, field=field))
    return problems


def _reference_problem(path: tuple[str, ...], declared: Mapping[str, Any]) -> str | None:
    root = path[0]
    if root not in ROOTS:
        return (f"'{{{{ {'.'.join(path)} }}}}' names nothing a run provides{did_you_mean(root, ROOTS)}; "
                f"placeholders start with one of {', '.join(sorted(ROOTS))}")
    if root == "params":
        if len(path) == 1:
            return "'{{ params }}' needs a parameter's name, as in {{ params.date }}"
        if path[1] not in declared:
            known = f"; the declared ones are {', '.join(declared)}" if declared else \
                "; the pipeline declares none (add it under `params:`)"
            return f"parameter '{path[1]}' is not declared{did_you_mean(path[1], declared)}{known}"
        if len(path) > 2 and declared[path[1]].type != "list":
            return f"'{'.'.join(path)}': parameter '{path[1]}' is a {declared[path[1]].type}, it has no parts"
    elif len(path) > 1 and root != "item":
        return f"'{'.'.join(path)}': {root} has no parts"
    return None
