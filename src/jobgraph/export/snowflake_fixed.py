"""What a Snowflake task graph fixes at export: run parameters, placeholders and `for_each` copies.

A task graph has no run parameters and a job service's specification is a constant: Snowflake cannot put a
value into it when a run starts. So the export renders every placeholder with what is known when it is written
(the params' given or default values, the pipeline's and job's names, each copy's item), says in the script which
values were baked in, and refuses what only a run knows (`scheduled_time`, `run_id`, `attempt`) and a `for_each`
over a predecessor's return value, naming the file, job and field. A job fanned out over a literal list or a list
parameter becomes one task per item (`JOB_0`, `JOB_1`, ...), and its dependents run `AFTER` every copy, as jobgraph
runs them once every copy succeeded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jobgraph.config.for_each import max_fan_out, source_of
from jobgraph.config.model import Job, Pipeline
from jobgraph.config.params import job_references, params_text, resolve
from jobgraph.errors import ConfigError, Problem
from jobgraph.export.snowflake_logging import FINALIZE_TASK
from jobgraph.template import TemplateError, render

RUN_TIME_ONLY = frozenset({"scheduled_time", "run_id", "attempt"})
"""Placeholders whose value exists only when a run starts: a job service's specification cannot take them."""

MAX_GRAPH_TASKS, MAX_PREDECESSORS = 1000, 100
"""Snowflake's limits: tasks in one task graph, predecessors of one task."""

AnyJob = TypeVar("AnyJob", bound=Job)


@dataclass(frozen=True)
class Fixed:
    """The pipeline as the task graph runs it: rendered, each fanned-out job as its copies; what was baked in."""

    pipeline: Pipeline
    header: tuple[str, ...] = ()
    notes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Comment lines for a job's task, by the task's (job's) name."""
    warnings: tuple[str, ...] = ()


def fixed(pipeline: Pipeline, given: Mapping[str, object] | None, root_task: str, file: str) -> Fixed:
    """The pipeline with its params' values (`given`, as typed after `--param`, else the defaults), its
    placeholders rendered and its `for_each` jobs expanded; ConfigError naming the file, job and field of
    anything a task graph cannot fix at export (a param with no value: `--param NAME`)."""
    values = resolve(pipeline, given, file, from_text=True)
    problems = [Problem("the value holds '$$', which would end the $$ constant each job service's specification "
                        "is written in (every job gets the params in $JOBGRAPH_PARAMS)",
                        field=f"--param {name}" if name in (given or {}) else f"params.{name}")
                for name, value in values.items() if "$$" in json.dumps(value, ensure_ascii=False)]
    problems += [problem for job in pipeline.all_jobs() for problem in _run_time_problems(job)]
    if problems:
        raise ConfigError(file, problems)
    common: dict[str, object] = {"params": values, "pipeline": pipeline.name}
    own_env = {"JOBGRAPH_PARAMS": params_text(values)} if pipeline.params else {}
    notes: dict[str, tuple[str, ...]] = {}
    stands_for: dict[str, tuple[str, ...]] = {}
    warnings: list[str] = []
    jobs: list[Job] = []
    origin: dict[str, str] = {}
    fanned_out: dict[str, str] = {}
    for job in pipeline.jobs:
        after = _after(job, stands_for)
        fanned = [fanned_out[name.casefold()] for name in job.after if name.casefold() in fanned_out]
        waits = (f"AFTER every copy of {', '.join(fanned)}: it runs once all of them succeeded, as jobgraph runs it "
                 "once every copy did.",) if fanned else ()
        if job.for_each is None:
            jobs.append(_rendered(job, {**common, "job": job.name}, own_env, file, after=after))
            stands_for[job.name.casefold()], notes[job.name] = (job.name,), waits
            continue
        copies = _copies(job, values, file)
        fanned_out[job.name.casefold()] = job.name
        if not copies:
            warnings.append(f"job {job.name}: for_each gave an empty list: no task; what follows it runs after its "
                            "predecessors, as in jobgraph")
        for index, item in enumerate(copies):
            name, run_name = f"{job.name}_{index}", f"{job.name}[{index}]"
            env = {**own_env, "JOBGRAPH_TASK": run_name, "JOBGRAPH_ITEM": _as_text(item)}
            jobs.append(_rendered(job, {**common, "job": run_name, "item": item}, env, file, after=after, name=name))
            origin[name] = job.name
            notes[name] = (f"Copy {index} of job {job.name}'s for_each ({len(copies)} items, one task each; jobgraph "
                           f"names it {run_name}): item {_shown(item)}.", *waits)
        stands_for[job.name.casefold()] = tuple(f"{job.name}_{index}" for index in range(len(copies))) or after
    finalizer = pipeline.finalizer
    if finalizer is not None:
        finalizer = _rendered(finalizer, {**common, "job": finalizer.name}, own_env, file, after=finalizer.after)
    result = pipeline.model_copy(update={"jobs": tuple(jobs), "finalizer": finalizer})
    _check_names(pipeline, origin, root_task, file)
    header = _baked(pipeline, values, given or {})
    if header:
        warnings.insert(0, "a Snowflake task graph has no run parameters: the params' values are fixed at export ("
                        + "; ".join(f"{name}={_shown(value)}" for name, value in values.items())
                        + "); export again to change them")
    warnings += _limit_warnings(result)
    return Fixed(result, header, notes, tuple(warnings))


def _run_time_problems(job: Job) -> list[Problem]:
    """A placeholder only a run can fill, and a `for_each` over a predecessor's return value."""
    problems: list[Problem] = []
    named: set[tuple[str, str]] = set()
    for field_name, path in job_references(job, problems):
        root = path[0]
        if root in RUN_TIME_ONLY and (field_name, root) not in named:
            named.add((field_name, root))
            problems.append(Problem(
                f"'{{{{ {root} }}}}' has a value only when a run starts, and Snowflake cannot put one into a job "
                "service's specification (EXECUTE JOB SERVICE takes it as a constant): it cannot be exported; use "
                "a param (its value is fixed at export) or have the job work it out itself", job=job.name,
                field=field_name))
    if job.for_each is not None and source_of(job.for_each).predecessor is not None:
        problems.append(Problem(
            f"a for_each over {source_of(job.for_each).predecessor}'s return value cannot be exported: a Snowflake "
            "task graph's tasks are fixed when it is created, not made from what a task returns",
            job=job.name, field="for_each"))
    return problems


def _copies(job: Job, values: Mapping[str, object], file: str) -> list[Any]:
    """The items of a job's list: its literal, or its list parameter's value (checked against max_fan_out)."""
    assert job.for_each is not None
    source = source_of(job.for_each)
    listed = source.literal if source.literal is not None else values[source.param or ""]
    assert isinstance(listed, list | tuple)  # a list param's value is a list (config/params.py)
    items = list(listed)
    if len(items) > max_fan_out(job):
        raise ConfigError(file, [Problem(f"parameter {source.param} has {len(items)} items, more than max_fan_out "
                                         f"{max_fan_out(job)}", job=job.name, field="for_each")])
    for index, item in enumerate(items):
        text = _as_text(item)
        if "$$" in text or "\x00" in text:
            raise ConfigError(file, [Problem(f"item {index} holds {'$$' if '$$' in text else 'a NUL byte'}, which "
                                             "its copy's job service specification cannot hold ($JOBGRAPH_ITEM)",
                                             job=job.name, field="for_each")])
    return items


def _rendered(job: AnyJob, values: Mapping[str, object], env: Mapping[str, str], file: str,
              after: tuple[str, ...], name: str | None = None) -> AnyJob:
    """The job (or a copy, `name`) with its args and env rendered; a value holding a NUL is refused."""
    texts = {**{f"args.{i}": text for i, text in enumerate(job.args)},
             **{f"env.{key}": text for key, text in job.env.items()}}
    done: dict[str, str] = {}
    for field_name, text in texts.items():
        try:
            done[field_name] = render(text, values)
        except TemplateError as exc:
            raise ConfigError(file, [Problem(str(exc), job=job.name, field=field_name)]) from None
        if "\x00" in done[field_name]:
            raise ConfigError(file, [Problem("a value put into it holds a NUL byte, which a job service's "
                                             "specification cannot hold", job=job.name, field=field_name)])
        if "$$" in done[field_name] and (done[field_name] != text or name is not None):
            raise ConfigError(file, [Problem(f"a value put into it holds '$$', which would end the $$ constant the "
                                             f"job service's specification is written in ({_shown(done[field_name])})",
                                             job=job.name, field=field_name)])
    args = tuple(done[f"args.{i}"] for i in range(len(job.args)))
    own = {key: done[f"env.{key}"] for key in job.env}
    return job.model_copy(update={"name": name or job.name, "args": args, "env": {**env, **own}, "after": after,
                                  "for_each": None, "max_fan_out": None})


def _after(job: Job, stands_for: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The job's predecessors as tasks: a fanned-out one as its copies (an empty one as its own predecessors)."""
    tasks: dict[str, None] = {}
    for predecessor in job.after:
        tasks.update(dict.fromkeys(stands_for.get(predecessor.casefold(), (predecessor,))))
    return tuple(tasks)


def _check_names(pipeline: Pipeline, origin: Mapping[str, str], root_task: str, file: str) -> None:
    """Each copy's task name is one no other task has (case-insensitively, as Snowflake resolves them); it is an
    identifier of at most 254 characters, as config/for_each.py keeps a fanned-out job's name to 249."""
    taken = {root_task.casefold(): "the root task", FINALIZE_TASK.casefold(): "the finalizer task"}
    taken.update((job.name.casefold(), f"job {job.name}") for job in pipeline.all_jobs())
    problems: dict[str, Problem] = {}
    for name, job in origin.items():
        if job not in problems and name.casefold() in taken:
            problems[job] = Problem(f"its copy's task would be named {name}, which {taken[name.casefold()]} has in "
                                    "Snowflake: rename one", job=job, field="for_each")
        taken.setdefault(name.casefold(), f"a copy of job {job}")
    if problems:
        raise ConfigError(file, list(problems.values()))


def _baked(pipeline: Pipeline, values: Mapping[str, object], given: Mapping[str, object]) -> tuple[str, ...]:
    """The script's lines saying which values were baked in, and from where."""
    if not pipeline.params:
        return ()
    lines = ["Run parameters, fixed at export (a Snowflake task graph has none: export again to change them):"]
    lines += [f"  {name} = {_shown(value)} ({'--param' if name in given else 'default'})"
              for name, value in values.items()]
    return tuple(lines)


def _limit_warnings(pipeline: Pipeline) -> list[str]:
    """Snowflake's task-graph limits: 1,000 tasks per graph, 100 predecessors per task (copies count)."""
    warnings = []
    tasks = len(pipeline.jobs) + 2
    if tasks > MAX_GRAPH_TASKS:
        warnings.append(f"{tasks} tasks (the jobs and their for_each copies, the root and the finalizer) is more "
                        f"than Snowflake's {MAX_GRAPH_TASKS} per task graph: Snowflake will refuse the graph")
    crowded = [job.name for job in pipeline.jobs if len(job.after) > MAX_PREDECESSORS]
    if crowded:
        warnings.append(f"more than {MAX_PREDECESSORS} predecessors (for_each copies count one each), Snowflake's "
                        f"limit per task: Snowflake will refuse {', '.join(crowded[:5])}"
                        f"{' ...' if len(crowded) > 5 else ''}")
    return warnings


def _as_text(item: object) -> str:
    """An item as `{{ item }}` and JOBGRAPH_ITEM give it: a string as it is, anything else as JSON."""
    return item if isinstance(item, str) else json.dumps(item, separators=(",", ":"), ensure_ascii=False)


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 200 else text[:197] + "..."
