"""What a job's `for_each` names, and what is wrong with it, checked before anything runs.

`for_each` is a literal list, `{{ params.NAME }}` (a list parameter of the run) or
`{{ JOB.return_value }}` (written `{from: JOB}` too: a predecessor's return value, a JSON list read
when the job becomes ready). The engine expands it (engine/fan_out.py); here each form is parsed once,
so a job that names no predecessor, an unknown one, a list wider than its `max_fan_out`, or `{{ item }}`
in a job that is not fanned out is refused with the file, the job and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jobgraph.config.model import DEFAULT_MAX_FAN_OUT, MAX_FAN_OUT, Job, Pipeline
from jobgraph.errors import Problem, did_you_mean
from jobgraph.template import PLACEHOLDER, TemplateError, references

COPY_NAME_ROOM = len(f"[{MAX_FAN_OUT - 1}]")
"""What a copy's name adds to its job's (`[9999]`): a job name that leaves no room for it cannot fan out."""

_NAME_LIMIT = 255


@dataclass(frozen=True)
class ForEachSource:
    """Where a fanned-out job's list comes from: `literal` items, a run parameter, or a predecessor's return value."""

    literal: tuple[Any, ...] | None = None
    param: str | None = None
    predecessor: str | None = None


def max_fan_out(job: Job) -> int:
    """How many copies the job may have."""
    return job.max_fan_out or DEFAULT_MAX_FAN_OUT


def source_of(for_each: tuple[Any, ...] | str) -> ForEachSource:
    """The source a valid `for_each` names; ValueError saying what is wrong with an invalid one."""
    if not isinstance(for_each, str):
        return ForEachSource(literal=tuple(for_each))
    text = for_each.strip()
    if len(PLACEHOLDER.findall(text)) != 1 or PLACEHOLDER.fullmatch(text) is None:
        raise ValueError(f"{_shown(for_each)} is not a list, '{{{{ params.NAME }}}}' or '{{{{ JOB.return_value }}}}'")
    try:
        found = references(text)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    path = found[0] if found else ()
    if len(path) == 2 and path[0] == "params":
        return ForEachSource(param=path[1])
    if len(path) == 2 and path[1] == "return_value" and path[0] != "params":
        return ForEachSource(predecessor=path[0])
    raise ValueError(f"{_shown(for_each)} names neither a parameter ('{{{{ params.NAME }}}}') nor a predecessor's "
                     "return value ('{{ JOB.return_value }}')")


def for_each_problems(pipeline: Pipeline, canonical: Mapping[str, str]) -> list[Problem]:
    """Every problem with the pipeline's `for_each` and `max_fan_out` fields, and `{{ item }}` where no item is."""
    problems: list[Problem] = []
    declared = _declared_params(pipeline)
    for job in pipeline.all_jobs():
        if job.for_each is None:
            if job.max_fan_out is not None:
                problems.append(Problem("max_fan_out applies only to a job with for_each", job=job.name,
                                        field="max_fan_out"))
            problems.extend(_item_problems(job))
            continue
        if pipeline.finalizer is not None and job is pipeline.finalizer:
            problems.append(Problem("the finalizer runs once, last: it cannot fan out", job=job.name,
                                    field="for_each"))
            continue
        if len(job.name) + COPY_NAME_ROOM > _NAME_LIMIT:
            problems.append(Problem(f"a job that fans out has a name of at most {_NAME_LIMIT - COPY_NAME_ROOM} "
                                    "characters (its copies are named JOB[0], JOB[1], ...)", job=job.name,
                                    field="for_each"))
        try:
            source = source_of(job.for_each)
        except ValueError as exc:
            problems.append(Problem(str(exc), job=job.name, field="for_each"))
            continue
        if source.literal is not None and len(source.literal) > max_fan_out(job):
            problems.append(Problem(f"the list has {len(source.literal)} items, more than max_fan_out "
                                    f"{max_fan_out(job)} (at most {MAX_FAN_OUT})", job=job.name, field="for_each"))
        unusable = next(((i, why) for i, item in enumerate(source.literal or ())
                         if (why := unusable_text(item)) is not None), None)
        if unusable is not None:
            problems.append(Problem(f"item {unusable[0]} {unusable[1]}", job=job.name, field="for_each"))
        if source.predecessor is not None:
            after = {canonical.get(p.casefold(), p).casefold() for p in job.after}
            if source.predecessor.casefold() not in after:
                hint = did_you_mean(source.predecessor, job.after) if job.after else ""
                problems.append(Problem(
                    f"'{source.predecessor}' is not one of this job's predecessors{hint}: a job can fan out over the "
                    "return value of a job in its 'after' list only", job=job.name, field="for_each"))
        if source.param is not None and declared is not None:
            kind = declared.get(source.param)
            if source.param not in declared:
                problems.append(Problem(f"no parameter named '{source.param}'"
                                        f"{did_you_mean(source.param, declared)}", job=job.name, field="for_each"))
            elif kind is not None and kind != "list":
                problems.append(Problem(f"parameter '{source.param}' is a {kind}, not a list", job=job.name,
                                        field="for_each"))
    return problems


def unusable_text(item: Any) -> str | None:
    """Why an item cannot be one (it holds a NUL or a lone surrogate, which no store, argument or variable
    can hold), or None."""
    stack = [item]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                return "holds a NUL character, which no argument or variable can"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "is text that is not valid Unicode (a lone surrogate)"
    return None


def _item_problems(job: Job) -> list[Problem]:
    """`{{ item }}` in the command, args or env of a job without for_each: there is no item to put there."""
    for field, texts in (("command", job.command or ()), ("args", job.args), ("env", job.env.values())):
        if any(path[0] == "item" for path in _paths(texts)):
            return [Problem("'{{ item }}' is only set in a job with for_each", job=job.name, field=field)]
    return []


def _paths(texts: Iterable[str]) -> Iterable[tuple[str, ...]]:
    for text in texts:
        if "{{" in text:
            try:
                yield from references(text)
            except TemplateError:  # reported by the placeholders' own check
                continue


def _declared_params(pipeline: Pipeline) -> dict[str, str | None] | None:
    """The pipeline's declared parameters and their types, when pipelines declare parameters (None: they do not)."""
    params = getattr(pipeline, "params", None)
    if params is None:
        return None
    found: dict[str, str | None] = {}
    entries = params.items() if isinstance(params, Mapping) else ((getattr(p, "name", None), p) for p in params)
    for name, spec in entries:
        kind = getattr(spec, "type", None)
        found[str(name)] = None if kind is None else str(getattr(kind, "value", kind))
    return found


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
