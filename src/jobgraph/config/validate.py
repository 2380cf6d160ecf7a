"""Checks that need the whole pipeline: unique names, known predecessors and pools, no cycles, mapped images."""

from __future__ import annotations

import graphlib

from pydantic import ValidationError

from jobgraph.config.model import Job, Pipeline
from jobgraph.errors import ConfigError, Problem, did_you_mean
from jobgraph.runners.registry import BACKENDS, RUNNER_NAMES, settings_model


def check_pipeline(pipeline: Pipeline, file: str, runner: str | None = None) -> Pipeline:
    """Raise ConfigError naming every problem; return the pipeline with names spelled as their definitions.

    Names compare case-insensitively, as Snowflake's unquoted identifiers do, so `T_MYJOB_3` in an
    `after` list means the job defined as `t_myjob_3`.
    """
    problems: list[Problem] = []
    canonical: dict[str, str] = {}
    everything = pipeline.all_jobs()
    for job in everything:
        key = job.name.casefold()
        if key in canonical:
            problems.append(Problem(f"duplicate name: '{canonical[key]}' is already defined "
                                    "(names are case-insensitive)", job=job.name, field="name"))
        else:
            canonical[key] = job.name
    pools = {name.casefold(): name for name in pipeline.pools}

    jobs: list[Job] = []
    for job in pipeline.jobs:
        after: list[str] = []
        for predecessor in job.after:
            name = canonical.get(predecessor.casefold())
            if name is None:
                problems.append(Problem(f"unknown predecessor '{predecessor}'{did_you_mean(predecessor, canonical)}",
                                        job=job.name, field="after"))
            elif name == job.name:
                problems.append(Problem("a job cannot run after itself", job=job.name, field="after"))
            elif pipeline.finalizer is not None and name == pipeline.finalizer.name:
                problems.append(Problem("no job can run after the finalizer", job=job.name, field="after"))
            elif name not in after:
                after.append(name)
        pool = pools.get((job.pool or "").casefold(), job.pool)
        jobs.append(job.model_copy(update={"after": tuple(after), "pool": pool}))

    if runner is not None and runner not in RUNNER_NAMES:
        problems.append(Problem(f"unknown runner {runner!r}; the runners are {', '.join(RUNNER_NAMES)}",
                                field="--runner"))
    else:
        unmapped: dict[str, list[str]] = {}
        for job in everything:
            used = runner or job.runner or "local"
            if BACKENDS[used].host_commands and job.image not in pipeline.images:
                unmapped.setdefault(job.image, []).append(job.name)
        for image, users in unmapped.items():
            others = f" (also used by {', '.join(users[1:])})" if len(users) > 1 else ""
            problems.append(Problem(
                f"image '{image}' has no command in 'images': the local and slurm runners need the host "
                f"command that stands for it, e.g. images: {{'{image}': [python, -m, jobgraph.jobs.sql]}}{others}",
                job=users[0], field="image"))
    problems.extend(runner_settings_problems(pipeline))
    if problems:
        raise ConfigError(file, problems)

    cycle = find_cycle(jobs)
    if cycle:
        raise ConfigError(file, [Problem("the jobs form a cycle: " + " -> ".join(cycle), job=cycle[0],
                                         field="after")])
    return pipeline.model_copy(update={"jobs": tuple(jobs)})


def runner_settings_problems(pipeline: Pipeline) -> list[Problem]:
    """Each `runners: {name: {...}}` section checked against that runner's own settings model."""
    problems = []
    for name, values in pipeline.runners.items():
        model = settings_model(name)
        if model is None:
            if values:
                problems.append(Problem(f"the {name} runner takes no settings", field=f"runners.{name}"))
            continue
        try:
            model.model_validate(values)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                where = ".".join(str(part) for part in ("runners", name, *error["loc"]))
                message = "unknown field" if error["type"] == "extra_forbidden" else str(error["msg"])
                problems.append(Problem(message.removeprefix("Value error, "), field=where))
    return problems


def find_cycle(jobs: list[Job]) -> list[str]:
    """The path of one cycle (first name repeated at the end), or [] when the jobs form a DAG."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for job in jobs:
        sorter.add(job.name, *job.after)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        path: list[str] = list(exc.args[1])  # each name runs before the next one
        return path
    return []
