"""`jobgraph export snowflake`: the pipeline as a native Snowflake task graph, a SQL script a person reviews and runs.

What the seed builds with two stored procedures and f-string SQL, written out as plain statements: the two
logging tables, a root task with the schedule, one task per job that runs the job's SPCS job service
synchronously (so the task fails when the job fails, instead of the seed's procedure swallowing it),
`AFTER` its predecessors, and the finalizer GET_GRAPH_STATS that logs every task of the run. A script
cannot take binds, so every identifier is validated and double-quoted and every value is a string literal
or a `$$` constant (runners/snowflake_sql.py); the job specs are the ones the SPCS runner sends
(runners/spcs_spec.py). What Snowflake cannot express (per-job retries, delays, trigger rules, queued
overlap) is said in a comment where it applies and returned as a warning.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from jobgraph.config.model import Finalizer, Job, Pipeline, Pool, TriggerRule
from jobgraph.errors import ConfigError, Problem
from jobgraph.export.snowflake_fixed import fixed
from jobgraph.export.snowflake_logging import FINALIZE_TASK, finalizer_block, table_statements
from jobgraph.runners.base import JobSpec
from jobgraph.runners.snowflake_sql import check_identifier, dollar_quoted, quote_identifier, string_literal
from jobgraph.runners.spcs_spec import SpcsSettings, job_problems, job_spec, spec_yaml

MAX_AUTO_RETRIES = 30
"""Snowflake's largest TASK_AUTO_RETRY_ATTEMPTS."""

MAX_TIMEOUT_MS = 86_400_000
"""Snowflake's largest USER_TASK_TIMEOUT_MS (one day), as documented when this was written."""

DOLLARS = "'$$' cannot be in a name exported to Snowflake: names are written into $$-quoted text, which it ends"

SERVERLESS_SIZE = "XSMALL"
"""The root task and the finalizer are serverless, as the seed's root task is; job tasks only wait for SPCS."""


@dataclass(frozen=True)
class Statement:
    """One SQL statement (no `;`), with the comment lines printed before it."""

    sql: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """A titled part of the script."""

    title: str
    statements: tuple[Statement, ...]


@dataclass(frozen=True)
class SnowflakeExport:
    """The script's parts, the teardown, and what could not be expressed."""

    pipeline: str
    root_task: str
    sections: tuple[Section, ...]
    teardown: tuple[Statement, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)
    header: tuple[str, ...] = ()
    """What the script says first: the run parameters' values baked in."""

    def statements(self) -> list[Statement]:
        """Every statement that builds the graph, in order (the teardown's are in `teardown`)."""
        return [statement for section in self.sections for statement in section.statements]

    def script(self, source: str) -> str:
        """The whole script: header, warnings, each section, then the teardown as comments."""
        parts = [comment(f"jobgraph export snowflake {source}: pipeline {self.pipeline} as a Snowflake task "
                         f"graph (root task {quote_identifier(self.root_task)})."),
                 comment("Run it in the database and schema the graph belongs in; running it again replaces the "
                         "tasks and keeps the logging tables' rows.")]
        if self.header:
            parts.append(comment("\n".join(self.header)))
        if self.warnings:
            parts.append(comment("\n".join(f"WARNING: {warning}" for warning in self.warnings)))
        for section in self.sections:
            parts.append(_section(section.title, section.statements))
        teardown = "\n".join(line for statement in self.teardown for line in _lines(statement))
        parts.append(comment("Teardown (the seed's drop_job_tasks()): `jobgraph export snowflake --teardown` "
                             "prints it to run.") + "\n" + comment(teardown))
        return "\n\n".join(parts) + "\n"

    def teardown_script(self, source: str) -> str:
        """The teardown alone, to run."""
        header = comment(f"jobgraph export snowflake --teardown {source}: removes the task graph of pipeline "
                         f"{self.pipeline}; the logging tables and their rows stay.")
        return header + "\n\n" + _section("Teardown", self.teardown) + "\n"


def comment(text: str) -> str:
    """Text as `--` lines: every line break of any kind starts a new comment line, so no text leaves the comment."""
    return "\n".join(f"-- {line}".rstrip() for line in (text.splitlines() or [""]))


def _lines(statement: Statement) -> list[str]:
    return [*(comment(note) for note in statement.notes), statement.sql + ";"]


def _section(title: str, statements: Iterable[Statement]) -> str:
    return "\n".join([comment(f"---- {title}"), *(line for s in statements for line in _lines(s))])


def export(pipeline: Pipeline, settings: SpcsSettings, root_task: str, file: str,
           params: dict[str, object] | None = None) -> SnowflakeExport:
    """The task graph of `pipeline` with the `params` given (as typed after `--param`, the rest their defaults)
    fixed in it, or a ConfigError naming the job and field that cannot be one (snowflake_fixed.py)."""
    problems = _name_problems(pipeline, root_task)
    problems += [Problem(message, job=job.name, field=field_name) for job in pipeline.all_jobs()
                 for field_name, message in job_problems(job.volumes, job.workdir, job.secrets, settings)]
    if problems:
        raise ConfigError(file, problems)
    done = fixed(pipeline, params, root_task, file)
    pipeline, warnings = done.pipeline, list(done.warnings)
    root = quote_identifier(root_task)
    sections = []
    if settings.database:
        where = quote_identifier(settings.database)
        use = f"USE SCHEMA {where}.{quote_identifier(settings.schema_name)}" if settings.schema_name else \
            f"USE DATABASE {where}"
        sections.append(Section("Where the graph lives (runners.spcs.database and schema)", (Statement(use),)))
    sections.append(Section("Logging tables (the seed's, kept across runs)",
                            tuple(Statement(sql) for sql in table_statements())))
    sections.append(Section("The root task: the schedule, overlap, suspension and graph retries",
                            (Statement(f"ALTER TASK IF EXISTS {root} SUSPEND",
                                       ("A task graph is changed only while its root task is suspended.",)),
                             _root_task(pipeline, root_task, warnings))))
    jobs: list[Statement] = []
    for job in _in_order(pipeline.jobs):
        jobs.append(_job_task(pipeline, job, settings, root_task, warnings, file, done.notes.get(job.name, ())))
    sections.append(Section("One task per job: its SPCS job service, run synchronously, after its predecessors",
                            tuple(jobs)))
    sections.append(Section("The finalizer: logs every task of the run into the logging tables",
                            (_finalize_task(pipeline, settings, root_task, warnings, file),)))
    sections.append(Section("Resume the graph (the root task last): it runs on its schedule, or by EXECUTE TASK",
                            (Statement(f"ALTER TASK {quote_identifier(FINALIZE_TASK)} RESUME"),
                             Statement(f"SELECT SYSTEM$TASK_DEPENDENTS_ENABLE({string_literal(root)})",
                                       (f"Then, to run it at once: EXECUTE TASK {root};",)))))
    return SnowflakeExport(pipeline.name, root_task, tuple(sections), _teardown(pipeline, root_task),
                           tuple(warnings), done.header)


def _name_problems(pipeline: Pipeline, root_task: str) -> list[Problem]:
    """Every name becomes a Snowflake identifier: the config's rule already is Snowflake's, but `$$` (which it
    allows) would end the `$$` constants names are written into; a job may not take the root task's or the
    finalizer task's name (case-insensitively, as Snowflake resolves them), nor may the root."""
    problems = []
    if "$$" in pipeline.name:
        problems.append(Problem(DOLLARS, field="name"))
    if "$$" in root_task or root_task.upper() == FINALIZE_TASK:
        problems.append(Problem(DOLLARS if "$$" in root_task else f"the root task may not be the finalizer task "
                                f"{FINALIZE_TASK}: use --root-task", field="root task"))
    taken = {root_task.upper(): "the root task", FINALIZE_TASK: "the finalizer task"}
    for job in pipeline.all_jobs():
        for value, field_name in ((job.name, "name"), (job.pool or "default", "pool")):
            try:
                check_identifier(value)
            except ValueError as exc:
                problems.append(Problem(str(exc), job=job.name, field=field_name))
            if "$$" in value:
                problems.append(Problem(DOLLARS, job=job.name, field=field_name))
        if job.name.upper() in taken and job is not pipeline.finalizer:
            problems.append(Problem(f"the task {quote_identifier(job.name)} would be {taken[job.name.upper()]}'s "
                                    "name in Snowflake: rename the job", job=job.name, field="name"))
    return problems


def _in_order(jobs: Iterable[Job]) -> list[Job]:
    """The jobs, each after its predecessors (Snowflake's AFTER names an existing task), else in file order."""
    listed = list(jobs)
    index = {job.name.casefold(): position for position, job in enumerate(listed)}
    waiting = [len(job.after) for job in listed]
    followers: list[list[int]] = [[] for _ in listed]
    for position, job in enumerate(listed):
        for predecessor in job.after:
            followers[index[predecessor.casefold()]].append(position)
    ready = [position for position, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        position = heapq.heappop(ready)
        ordered.append(listed[position])
        for follower in followers[position]:
            waiting[follower] -= 1
            if waiting[follower] == 0:
                heapq.heappush(ready, follower)
    return ordered


def snowflake_schedule(text: str) -> str:
    """A jobgraph schedule in Snowflake's own syntax: `N MINUTE`, or `USING CRON <five fields> <zone>`.

    Snowflake's day of week is 0-6 (SUN-SAT): a field naming Sunday as 7, as standard cron may, is written
    as the days it means (`5-7` -> `0,5,6`).
    """
    from jobgraph.schedule import parse_schedule

    schedule = parse_schedule(text)
    if schedule.minutes is not None:
        return f"{schedule.minutes} MINUTE"
    assert schedule.cron is not None
    fields = schedule.cron.split(" ")
    if re.search(r"(?<!\d)7(?!\d)", fields[4]):
        from croniter import croniter

        fields[4] = ",".join(str(day) for day in croniter.expand(schedule.cron)[0][4])
    return f"USING CRON {' '.join(fields)} {schedule.zone}"


def _root_task(pipeline: Pipeline, root_task: str, warnings: list[str]) -> Statement:
    notes, clauses = [], [f"USER_TASK_MANAGED_INITIAL_WAREHOUSE_SIZE = {string_literal(SERVERLESS_SIZE)}"]
    if pipeline.schedule is not None:
        clauses.append(f"SCHEDULE = {string_literal(snowflake_schedule(pipeline.schedule))}")
    else:
        notes.append("No schedule in the file: the graph runs only by EXECUTE TASK.")
    clauses.append(f"ALLOW_OVERLAPPING_EXECUTION = {'TRUE' if pipeline.overlap == 'allow' else 'FALSE'}")
    if pipeline.overlap == "queue":
        warnings.append("overlap 'queue' cannot be expressed: Snowflake skips a scheduled run while one is running "
                        "(ALLOW_OVERLAPPING_EXECUTION = FALSE), it never queues it")
    clauses.append(f"SUSPEND_TASK_AFTER_NUM_FAILURES = {pipeline.suspend_after_failures or 0}")
    if pipeline.suspend_after_failures is None:
        notes.append("The file sets no suspend_after_failures: 0 keeps Snowflake from suspending the graph "
                     "(its default is 10).")
    retries = max((job.retries or 0 for job in pipeline.all_jobs()), default=0)
    clauses.append(f"COMMENT = {string_literal(f'jobgraph pipeline {pipeline.name}: root task')}")
    if retries:
        clauses.append(f"TASK_AUTO_RETRY_ATTEMPTS = {min(retries, MAX_AUTO_RETRIES)}")
        notes.append(f"Snowflake retries a failed graph run (its failed tasks and what follows them), not a job: "
                     f"TASK_AUTO_RETRY_ATTEMPTS is the most retries any job asks for ({retries}).")
        _retry_warnings(pipeline, retries, warnings)
    return Statement(_create_task(root_task, clauses, "SELECT CURRENT_TIMESTAMP()"), tuple(notes))


def _retry_warnings(pipeline: Pipeline, retries: int, warnings: list[str]) -> None:
    counts = sorted({job.retries or 0 for job in pipeline.all_jobs()})
    if len(counts) > 1:
        warnings.append(f"per-job retry counts ({', '.join(map(str, counts))}) cannot be expressed: Snowflake retries "
                        f"the whole graph run's failed tasks, up to TASK_AUTO_RETRY_ATTEMPTS = "
                        f"{min(retries, MAX_AUTO_RETRIES)} times for every job")
    if retries > MAX_AUTO_RETRIES:
        warnings.append(f"{retries} retries is more than Snowflake's {MAX_AUTO_RETRIES}: capped")
    delayed = [job.name for job in pipeline.all_jobs() if job.retries and (job.retry_delay or
                                                                          (job.retry_backoff or 1) > 1)]
    if delayed:
        warnings.append(f"retry delay and backoff cannot be expressed (Snowflake retries a graph at once): "
                        f"{', '.join(delayed)}")


def _create_task(name: str, clauses: list[str], body: str, after: Iterable[str] = ()) -> str:
    """CREATE OR REPLACE TASK with its clauses in the order Snowflake's grammar lists them, AFTER last."""
    lines = [f"CREATE OR REPLACE TASK {quote_identifier(name)}", *(f"  {clause}" for clause in clauses)]
    predecessors = list(after)
    if predecessors:
        lines.append(f"  AFTER {', '.join(quote_identifier(p) for p in predecessors)}")
    return "\n".join([*lines, "AS", body])


def _job_task(pipeline: Pipeline, job: Job, settings: SpcsSettings, root_task: str, warnings: list[str],
              file: str, fixed_notes: Iterable[str]) -> Statement:
    notes = [*fixed_notes, *_job_notes(job, warnings)]
    clauses = _timeout_clauses(job, notes, warnings)
    clauses.append(f"COMMENT = {string_literal(f'jobgraph pipeline {pipeline.name}, job {job.name}')}")
    body = _execute_job_service(pipeline, job, settings, file, dollar_quoted)
    return Statement(_create_task(job.name, clauses, body, job.after or (root_task,)), tuple(notes))


def _timeout_clauses(job: Job, notes: list[str], warnings: list[str]) -> list[str]:
    """The job's timeout as the task's USER_TASK_TIMEOUT_MS: the task's end cancels its synchronous job service."""
    if job.timeout is None:
        notes.append("No timeout in the file: Snowflake's default task timeout (USER_TASK_TIMEOUT_MS, one hour) "
                     "applies.")
        return []
    milliseconds = round(job.timeout * 1000)
    if milliseconds > MAX_TIMEOUT_MS:
        warnings.append(f"job {job.name}: a timeout of {job.timeout:g} s is more than Snowflake's one day: capped")
    return [f"USER_TASK_TIMEOUT_MS = {min(milliseconds, MAX_TIMEOUT_MS)}"]


def _job_notes(job: Job, warnings: list[str]) -> list[str]:
    notes = []
    if job.retries:
        delay = f", {job.retry_delay:g} s apart" if job.retry_delay else ""
        times = "retry" if job.retries == 1 else "retries"
        notes.append(f"jobgraph: {job.retries} {times}{delay}; Snowflake: the root task's TASK_AUTO_RETRY_ATTEMPTS.")
    if job.trigger_rule == TriggerRule.ALL_DONE:
        warnings.append(f"job {job.name}: trigger_rule all_done cannot be expressed: Snowflake runs a task only once "
                        "every predecessor succeeded")
        notes.append("jobgraph: runs after its predecessors however they ended (all_done); Snowflake: only if all "
                     "succeeded.")
    if job.network not in (None, "bridge"):
        warnings.append(f"job {job.name}: network {job.network!r} is a container-runner setting with no SPCS "
                        "equivalent: left out (egress is runners.spcs.external_access_integrations)")
    if job.pool in (None, "default"):
        warnings.append(f"job {job.name} names no pool: its job service runs in the compute pool \"DEFAULT\"")
    return notes


def _execute_job_service(pipeline: Pipeline, job: Job, settings: SpcsSettings, file: str,
                         quote_spec: Callable[[str], str]) -> str:
    """The job's EXECUTE JOB SERVICE, synchronous (the task ends when the job does, failed if it failed).

    No NAME: Snowflake names each execution, so a run never collides with the last one's service (whose
    metadata Snowflake keeps for 14 days) or with an overlapping run; the COMMENT names the job.
    """
    text = spec_yaml(job_spec(_spec(pipeline, job), settings, _pool(pipeline, job)))
    try:
        specification = quote_spec(text)
    except ValueError as exc:
        raise ConfigError(file, [Problem(f"cannot be written into the job's specification: {exc}", job=job.name,
                                         field=_field_holding_dollars(job))]) from None
    lines = [f"EXECUTE JOB SERVICE IN COMPUTE POOL {quote_identifier(job.pool or 'default')}"]
    if settings.warehouse:
        lines.append(f"  QUERY_WAREHOUSE = {quote_identifier(check_identifier(settings.warehouse))}")
    lines.append(f"  COMMENT = {string_literal(f'jobgraph pipeline {pipeline.name}, job {job.name}')}")
    if settings.external_access_integrations:
        names = ", ".join(quote_identifier(check_identifier(n)) for n in settings.external_access_integrations)
        lines.append(f"  EXTERNAL_ACCESS_INTEGRATIONS = ({names})")
    lines.append(f"  FROM SPECIFICATION {specification}")
    return "\n".join(lines)


def _field_holding_dollars(job: Job) -> str:
    if "$$" in job.image:
        return "image"
    if any("$$" in arg for arg in job.args):
        return "args"
    return "env"


def _spec(pipeline: Pipeline, job: Job) -> JobSpec:
    """What the runner would get for the job, minus what only a run has (its id, log file, scheduled time)."""
    env = {"JOBGRAPH_PIPELINE": pipeline.name, "JOBGRAPH_TASK": job.name, **job.env}
    return JobSpec(run_id="", pipeline=pipeline.name, task=job.name, attempt=1, image=job.image, args=job.args,
                   env=env, log_path=Path("/dev/null"), pool=job.pool or "default",
                   container_name=job.container_name, secret_names=frozenset(job.secrets), log_limit=job.log_limit or 0,
                   timeout=job.timeout)


def _pool(pipeline: Pipeline, job: Job) -> Pool | None:
    return {name.casefold(): pool for name, pool in pipeline.pools.items()}.get((job.pool or "default").casefold())


def _finalize_task(pipeline: Pipeline, settings: SpcsSettings, root_task: str, warnings: list[str],
                   file: str) -> Statement:
    """GET_GRAPH_STATS, FINALIZE = the root: it runs after every run, however the run ended (the seed's)."""
    notes = ["Snowflake Scripting in EXECUTE IMMEDIATE, so SnowSQL and Snowsight both read it as one statement."]
    job_statement, clauses = None, [f"USER_TASK_MANAGED_INITIAL_WAREHOUSE_SIZE = {string_literal(SERVERLESS_SIZE)}"]
    if pipeline.finalizer is not None:
        finalizer: Finalizer = pipeline.finalizer
        notes.append(f"It also runs the pipeline's finalizer job {finalizer.name} (a root has one finalizer task).")
        notes.extend(_job_notes(finalizer, warnings))
        clauses += _timeout_clauses(finalizer, notes, warnings)
        job_statement = _execute_job_service(pipeline, finalizer, settings, file, string_literal)
    clauses += [f"COMMENT = {string_literal(f'jobgraph pipeline {pipeline.name}: logs every task of the run')}",
               f"FINALIZE = {quote_identifier(root_task)}"]
    body = "EXECUTE IMMEDIATE " + _dollar_block(finalizer_block(root_task, job_statement), file)
    return Statement(_create_task(FINALIZE_TASK, clauses, body), tuple(notes))


def _dollar_block(block: str, file: str) -> str:
    try:
        return dollar_quoted("\n" + block + "\n")
    except ValueError as exc:
        raise ConfigError(file, [Problem(f"cannot be written into the finalizer's block: {exc}", job="finalizer")]) \
            from None


def _teardown(pipeline: Pipeline, root_task: str) -> tuple[Statement, ...]:
    """Suspend the root, drop the finalizer and the job tasks (dependents first), then the root; keep the tables."""
    root = quote_identifier(root_task)
    statements = [Statement(f"ALTER TASK IF EXISTS {root} SUSPEND"),
                  Statement(f"DROP TASK IF EXISTS {quote_identifier(FINALIZE_TASK)}")]
    statements += [Statement(f"DROP TASK IF EXISTS {quote_identifier(job.name)}")
                   for job in reversed(_in_order(pipeline.jobs))]
    statements.append(Statement(f"DROP TASK IF EXISTS {root}",
                                ("The logging tables jobs_run_stats and task_logging_stats are kept: drop them "
                                 "yourself once their rows are no longer needed.",)))
    return tuple(statements)
