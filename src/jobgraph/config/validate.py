"""Checks that need the whole pipeline: unique names, known predecessors and pools, no cycles, mapped images."""

from __future__ import annotations

from pydantic import ValidationError

from jobgraph.config.for_each import for_each_problems
from jobgraph.config.model import COMMAND_IMAGE, Job, Pipeline
from jobgraph.config.params import template_problems
from jobgraph.errors import ConfigError, Problem, did_you_mean
from jobgraph.runners.registry import BACKENDS, RUNNER_NAMES, settings_model

HINTS = 20
"""Unknown predecessors that get a "did you mean": each hint compares with every name, so not one per job of 10,000."""


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
    hints = HINTS
    for job in pipeline.jobs:
        after: dict[str, None] = {}
        for predecessor in job.after:
            name = canonical.get(predecessor.casefold())
            if name is None:
                hint = did_you_mean(predecessor, canonical.values()) if hints > 0 else ""
                hints -= 1
                problems.append(Problem(f"unknown predecessor '{predecessor}'{hint}", job=job.name, field="after"))
            elif name == job.name:
                problems.append(Problem("a job cannot run after itself", job=job.name, field="after"))
            elif pipeline.finalizer is not None and name == pipeline.finalizer.name:
                problems.append(Problem("no job can run after the finalizer", job=job.name, field="after"))
            else:
                after[name] = None
        pool = pools.get((job.pool or "").casefold(), job.pool)
        if tuple(after) != job.after or pool != job.pool:  # a name spelled otherwise than its definition
            job = job.model_copy(update={"after": tuple(after), "pool": pool})
        jobs.append(job)

    if runner is not None and runner not in RUNNER_NAMES:
        problems.append(Problem(f"unknown runner {runner!r}; the runners are {', '.join(RUNNER_NAMES)}",
                                field="--runner"))
    else:
        unmapped: dict[str, list[str]] = {}
        for job in everything:
            used = runner or job.runner or "local"
            if job.command is not None:
                problems.extend(_command_problems(job, used))
                continue
            if BACKENDS[used].host_commands and job.image not in pipeline.images:
                unmapped.setdefault(job.image, []).append(job.name)
        for image, users in unmapped.items():
            more = f" and {len(users) - 11:,} more jobs" if len(users) > 11 else ""  # one line, not one per job
            others = f" (also used by {', '.join(users[1:11])}{more})" if len(users) > 1 else ""
            problems.append(Problem(
                f"image '{image}' has no command in 'images': the local and slurm runners need the host "
                f"command that stands for it, e.g. images: {{'{image}': [python, -m, jobgraph.jobs.sql]}}{others}",
                job=users[0], field="image"))
    problems.extend(runner_settings_problems(pipeline))
    problems.extend(for_each_problems(pipeline, canonical))
    problems.extend(_kubernetes_problems(pipeline, runner))
    problems.extend(_spcs_problems(pipeline, runner))
    problems.extend(_param_problems(pipeline))
    problems.extend(template_problems(pipeline))
    if problems:
        raise ConfigError(file, problems)

    cycle = find_cycle(jobs)
    if cycle:
        raise ConfigError(file, [Problem("the jobs form a cycle: " + " -> ".join(cycle), job=cycle[0],
                                         field="after")])
    if all(checked is job for checked, job in zip(jobs, pipeline.jobs, strict=True)):
        return pipeline
    return pipeline.model_copy(update={"jobs": tuple(jobs)})


def _command_problems(job: Job, runner: str) -> list[Problem]:
    """A `command:` is a host command: a job has it instead of an image, on a runner that runs host commands."""
    if job.image != COMMAND_IMAGE:
        return [Problem(f"a job runs either an image or a command, not both (it has image '{job.image}')",
                        job=job.name, field="command")]
    if not BACKENDS[runner].host_commands:
        hosts = ", ".join(name for name, found in BACKENDS.items() if found.host_commands)
        return [Problem(f"a command is run on the host, which the {runner} runner cannot do (it runs images; "
                        f"{hosts} run commands): give the job an image instead", job=job.name, field="command")]
    return []


def _param_problems(pipeline: Pipeline) -> list[Problem]:
    """Parameter names are unique (case-insensitively, as every name here), and a scheduled run can have them all."""
    problems = []
    seen: dict[str, str] = {}
    for param in pipeline.params:
        key = param.name.casefold()
        if key in seen:
            problems.append(Problem(f"duplicate parameter: '{seen[key]}' is already declared",
                                    field=f"params.{param.name}"))
        seen.setdefault(key, param.name)
    return problems


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


def _kubernetes_problems(pipeline: Pipeline, runner: str | None) -> list[Problem]:
    """What of the jobs that run on Kubernetes cannot become a Job (a volume with no claim...), before anything runs."""
    jobs = [job for job in pipeline.all_jobs() if (runner or job.runner) == "kubernetes"]
    if not jobs:
        return []
    from jobgraph.runners.kubernetes_manifest import KubernetesSettings, job_problems

    try:
        settings = KubernetesSettings.model_validate(pipeline.runners.get("kubernetes", {}))
    except ValidationError:  # reported field by field by runner_settings_problems
        return []
    return [Problem(message, job=job.name, field=field)
            for job in jobs for field, message in job_problems(job.volumes, job.secrets, settings)]


def _spcs_problems(pipeline: Pipeline, runner: str | None) -> list[Problem]:
    """What of the jobs that run on SPCS cannot become a job service (a volume, an unmapped secret...)."""
    jobs = [job for job in pipeline.all_jobs() if (runner or job.runner) == "spcs"]
    if not jobs:
        return []
    from jobgraph.runners.spcs_spec import SpcsSettings, job_problems

    try:
        settings = SpcsSettings.model_validate(pipeline.runners.get("spcs", {}))
    except ValidationError:  # reported field by field by runner_settings_problems
        return []
    return [Problem(message, job=job.name, field=field)
            for job in jobs for field, message in job_problems(job.volumes, job.workdir, job.secrets, settings)]


def find_cycle(jobs: list[Job]) -> list[str]:
    """The path of one cycle (first name repeated at the end, each name running before the next), or [] for a DAG.

    Linear in jobs and edges: peel off every job whose predecessors are all peeled (Kahn); what is
    left is cycles and what runs after them, so walking predecessors from any of it meets a cycle.
    Every predecessor must be one of `jobs` (check_pipeline has reported any other first).
    """
    after = {job.name: job.after for job in jobs}
    waiting = {name: len(predecessors) for name, predecessors in after.items()}
    successors: dict[str, list[str]] = {name: [] for name in after}
    for name, predecessors in after.items():
        for predecessor in predecessors:
            successors[predecessor].append(name)
    ready = [name for name, count in waiting.items() if count == 0]
    while ready:
        for successor in successors[ready.pop()]:
            waiting[successor] -= 1
            if waiting[successor] == 0:
                ready.append(successor)
    left = [name for name, count in waiting.items() if count > 0]
    if not left:
        return []
    seen: dict[str, int] = {}
    path: list[str] = []
    name = left[0]
    while name not in seen:
        seen[name] = len(path)
        path.append(name)
        name = next(p for p in after[name] if waiting[p] > 0)
    cycle = path[seen[name]:][::-1]
    return [*cycle, cycle[0]]
