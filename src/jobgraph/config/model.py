"""The pipeline as jobgraph understands it: pydantic models that are also the JSON Schema editors check against.

This module holds the pipeline's shape: jobs, pools, defaults and how a job takes them. What each field
accepts is config/fields.py's part; the parameters and notifications of a run, config/run_settings.py's.
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from jobgraph.config.fields import (
    INSTANCE_FAMILIES,
    Command,
    Duration,
    ForEach,
    FrozenModel,
    InstanceFamily,
    LogLimit,
    Name,
    NetworkMode,
    Retries,
    RetryConditions,
    RunnerName,
    Text,
    check_memory,
    memory_bytes,
)
from jobgraph.config.run_settings import Notify, Param
from jobgraph.runners.base import DEFAULT_LOG_LIMIT

DEFAULT_MAX_FAN_OUT = 1_000
"""How many copies a `for_each` job may have unless it sets `max_fan_out` (Airflow's max_map_length is 1,024)."""

MAX_FAN_OUT = 10_000
"""The hard cap on `max_fan_out`: every copy is a row, a log folder and a slot in the live view."""


def _check_schedule(text: str) -> str:
    from jobgraph.schedule import parse_schedule  # only a pipeline with a schedule needs cron's parser

    parse_schedule(text)
    return text


def _split_after(value: Any) -> Any:
    """`after` may be a list or the seed's comma-separated string."""
    if isinstance(value, str):
        return [part for part in value.split(",")] if value.strip() else []
    return value


class TriggerRule(StrEnum):
    """When a job runs, given how its predecessors ended."""

    ALL_SUCCESS = "all_success"  #: only if every predecessor succeeded (the safe default)
    ALL_DONE = "all_done"  #: once every predecessor finished, however it ended (the seed's behaviour)


class Pool(FrozenModel):
    """A compute pool: how many jobs run in it at once, and what each may use (container runners)."""

    max_parallel: int = Field(strict=True, ge=1, le=100_000)
    instance_family: InstanceFamily | None = Field(
        default=None, description="Snowflake's instance family: sets cpu and memory as Snowflake publishes them")
    cpu: float | None = Field(default=None, gt=0, le=1024, description="CPUs per job")
    memory: Annotated[str, AfterValidator(check_memory)] | None = Field(
        default=None, description="Memory per job: bytes, or a number with k, m, g (e.g. 512m, 6g)")

    def limits(self) -> tuple[float | None, int | None]:
        """(cpus, memory bytes) per job: explicit values first, else the instance family's."""
        family_cpu, family_memory = INSTANCE_FAMILIES.get(self.instance_family or "", (None, None))
        memory = memory_bytes(self.memory) if self.memory else family_memory
        return self.cpu or family_cpu, memory


class Defaults(FrozenModel):
    """Values for every job that does not set its own."""

    retries: Retries = 0
    retry_delay: Duration = 0.0
    retry_backoff: float = Field(default=1.0, ge=1.0, le=10.0)
    retry_on: RetryConditions | None = Field(
        default=None, description="Retry only a failure named here: exit codes, timeout, error, oom, lost "
        "[default: any failure]")
    no_retry_on: RetryConditions = Field(
        default=(), description="Never retry a failure named here (wins over retry_on)")
    retry_for: Duration | None = Field(
        default=None, gt=0, description="No retry starts once this long has passed since the first attempt began")
    timeout: Duration | None = Field(default=None, gt=0)
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    pool: Name = "default"
    pool_size: int = Field(default_factory=lambda: os.cpu_count() or 1, strict=True, ge=1, le=100_000)
    runner: RunnerName = "local"
    volumes: dict[Text, Text] = Field(default_factory=dict, description="Mounted into every job's container")
    workdir: Text | None = None
    network: NetworkMode = "bridge"
    log_limit: LogLimit = Field(
        default=DEFAULT_LOG_LIMIT, description="The most output stored per attempt (e.g. 100m, 1g): beyond it the log "
        "ends with a note and the job runs on")


COMMAND_IMAGE = "(command)"
"""The image of a job given as a `command:` (a host command, no image): what the store and `graph` show."""


def _command_stands_for_image(data: Any) -> Any:
    """A job with a `command:` and no image runs that host command: its image is COMMAND_IMAGE."""
    if isinstance(data, dict) and data.get("command") is not None and "image" not in data:
        return {**data, "image": COMMAND_IMAGE}
    return data


def _image_or_command(schema: dict[str, Any]) -> None:
    """The JSON Schema editors check against: a job has an image, or instead a host command."""
    schema["required"] = [name for name in schema.get("required", []) if name != "image"]
    schema["anyOf"] = [{"required": ["image"]}, {"required": ["command"]}]


class Job(FrozenModel):
    """One node of the DAG: an image run with args (or a host `command`), after its predecessors."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_image_or_command)

    name: Name
    image: Text = Field(min_length=1)
    command: Command | None = Field(
        default=None, description="Instead of an image: the host command (a list, no shell) the local runner "
        "runs, with the job's args after it")
    args: tuple[Text, ...] = ()
    env: dict[Name, Text] = Field(default_factory=dict)
    after: Annotated[tuple[Name, ...], BeforeValidator(_split_after)] = ()
    pool: Name | None = None
    retries: Retries | None = None
    retry_delay: Duration | None = None
    retry_backoff: float | None = Field(default=None, ge=1.0, le=10.0)
    retry_on: RetryConditions | None = Field(
        default=None, description="Retry only a failure named here: exit codes (1-255), timeout, error (the runner "
        "could not start it), oom, lost (remote node lost, pod evicted) [default: defaults.retry_on, any failure]")
    no_retry_on: RetryConditions | None = Field(
        default=None, description="Never retry a failure named here; wins over retry_on "
        "[default: defaults.no_retry_on]")
    retry_for: Duration | None = Field(
        default=None, gt=0, description="No retry starts once this long has passed since the first attempt began "
        "(its delay included) [default: defaults.retry_for]")
    timeout: Duration | None = Field(default=None, gt=0)
    trigger_rule: TriggerRule | None = None
    container_name: str | None = Field(
        default=None, description="The seed's job_name: a prefix for the container or service name."
    )
    runner: RunnerName | None = None
    secrets: tuple[Name, ...] = Field(
        default=(), description="Environment variables passed from jobgraph's own environment at run time; "
        "their values are never stored and are redacted from logs and errors.")
    volumes: dict[Text, Text] = Field(
        default_factory=dict, description="Container runners: host path -> container path (append ':ro' to "
        "the container path for read-only). Relative host paths are relative to the working directory.")
    workdir: Text | None = Field(default=None, description="Container runners: the working directory inside.")
    network: NetworkMode | None = Field(
        default=None, description="Container runners: 'none' (fastest start, no network), 'bridge' or 'host'")
    log_limit: LogLimit | None = Field(
        default=None, description="The most output stored per attempt (e.g. 100m, 1g) [default: defaults.log_limit]")
    for_each: ForEach | None = Field(
        default=None, description="Run the job once per item, as copies JOB[0], JOB[1], ... ({{ item }} in args and "
        "env): a list, '{{ params.NAME }}' (a list parameter) or '{{ JOB.return_value }}' / {from: JOB} (a "
        "predecessor's return value, a JSON list)")
    max_fan_out: int | None = Field(
        default=None, strict=True, ge=1, le=MAX_FAN_OUT,
        description=f"The most copies for_each may make [default: {DEFAULT_MAX_FAN_OUT}]; a wider list fails the job")

    @model_validator(mode="before")
    @classmethod
    def _command_without_image(cls, data: Any) -> Any:
        return _command_stands_for_image(data)


def validated_job(fields: dict[str, Any]) -> Job:
    """A Job from fields that were already validated with the types the Job's own fields have (the seed's).

    What `Job.model_construct` does, without its per-call look at each default factory's signature,
    which costs more than validating the job again; the unset fields get their defaults.
    """
    job = Job.__new__(Job)
    object.__setattr__(job, "__dict__", {**_JOB_DEFAULTS, "env": {}, "volumes": {}, **fields})
    object.__setattr__(job, "__pydantic_fields_set__", set(fields))
    object.__setattr__(job, "__pydantic_extra__", None)
    object.__setattr__(job, "__pydantic_private__", None)
    return job


_JOB_DEFAULTS = {name: field.get_default(call_default_factory=True)
                 for name, field in Job.model_fields.items() if not field.is_required()}


class Finalizer(Job):
    """A job that runs last, always, whatever happened to the others (the seed's GET_GRAPH_STATS)."""

    name: Name = "finalizer"

    @model_validator(mode="after")
    def _no_predecessors(self) -> Finalizer:
        if self.after:
            raise ValueError("the finalizer runs after every job; it takes no 'after'")
        return self


_J = TypeVar("_J", bound="Job")

OWN_JOBS = "own_jobs"
"""Validation context key: the Job instances given were built for this pipeline alone (the seed form's)."""


class Pipeline(FrozenModel):
    """A whole pipeline file, in native form (the seed's array is converted to this)."""

    name: Name
    schedule: Annotated[str, AfterValidator(_check_schedule)] | None = Field(
        default=None, description="'59 MINUTE', 'USING CRON 0 9 * * MON America/Los_Angeles', or '*/5 * * * * [zone]'")
    overlap: Literal["skip", "allow", "queue"] = "skip"
    suspend_after_failures: int | None = Field(default=None, strict=True, ge=1)
    pools: dict[Name, Pool] = Field(default_factory=dict)
    images: dict[Annotated[str, Field(min_length=1)], Command] = Field(
        default_factory=dict, description="Local runner: image -> the host command that stands for it")
    container_images: dict[Annotated[str, Field(min_length=1)], Annotated[Text, Field(min_length=1)]] = Field(
        default_factory=dict, description="Container runners: image named in a job -> the image to run "
        "(e.g. the seed's registry path -> a locally built image)")
    defaults: Defaults = Field(default_factory=Defaults)
    params: tuple[Param, ...] = Field(
        default=(), description="Run parameters: {{ params.NAME }} in args and env; --param NAME=VALUE on run, "
        "trigger and deploy. Their values are recorded with each run: never a secret")
    jobs: tuple[Job, ...] = Field(min_length=1)
    jobs_from: str | list[str] | None = Field(
        default=None, description="Seed-form arrays (paths relative to this file) whose jobs are added."
    )
    finalizer: Finalizer | None = None
    runners: dict[RunnerName, dict[str, Any]] = Field(
        default_factory=dict, description="Settings of each runner, e.g. runners: {slurm: {partition: debug}}; "
        "`jobgraph schema` lists each runner's fields")
    notify: tuple[Notify, ...] = Field(
        default=(), max_length=20, description="Webhooks and hooks told when the run fails or succeeds, or a job fails")

    @field_validator("jobs", mode="wrap")
    @classmethod
    def _jobs_with_defaults(cls, value: Any, handler: ValidatorFunctionWrapHandler,
                            info: ValidationInfo) -> tuple[Job, ...]:
        """Resolve every job's unset fields, so the engine and the stored snapshot see final values.

        A job this validation built is completed in place (10,000 jobs, no copy), and so is a Job the
        caller built for this pipeline alone (validation context `{OWN_JOBS: True}`); any other Job
        instance may be shared, so it gets a completed copy.
        """
        jobs: tuple[Job, ...] = handler(value)
        defaults = info.data.get("defaults")
        if defaults is None:  # the defaults were invalid: that error is reported, nothing to resolve
            return jobs
        if isinstance(info.context, dict) and info.context.get(OWN_JOBS):
            shared: set[int] | None = set()
        elif isinstance(value, list | tuple):
            shared = {id(item) for item in value if isinstance(item, BaseModel)}
        else:
            shared = None
        return tuple(_with_defaults(job, defaults, in_place=shared is not None and id(job) not in shared)
                     for job in jobs)

    @model_validator(mode="after")
    def _apply_defaults_to_finalizer(self) -> Pipeline:
        if self.finalizer is not None:
            object.__setattr__(self, "finalizer", _with_defaults(self.finalizer, self.defaults))
        return self

    def all_jobs(self) -> list[Job]:
        """The jobs, then the finalizer if there is one: everything that runs."""
        return [*self.jobs, *([self.finalizer] if self.finalizer else [])]

    def pool_size(self, pool: str) -> int:
        """Slots of a pool; pools the file does not define get `defaults.pool_size`."""
        defined = {name.casefold(): p for name, p in self.pools.items()}.get(pool.casefold())
        return defined.max_parallel if defined else self.defaults.pool_size


_DEFAULTED = ("retries", "retry_delay", "retry_backoff", "retry_on", "no_retry_on", "retry_for", "timeout",
              "trigger_rule", "pool", "runner", "workdir", "network", "log_limit")
"""A job's fields that, unset, take the value `defaults` has."""


def _with_defaults(job: _J, defaults: Defaults, in_place: bool = False) -> _J:
    """The job with each unset field taken from the defaults: itself when `in_place`, else a copy if any changes."""
    values, given = job.__dict__, defaults.__dict__
    update = {field: given[field] for field in _DEFAULTED if values[field] is None}
    if defaults.volumes:
        update["volumes"] = {**defaults.volumes, **job.volumes}
    if not update:
        return job
    if not in_place:
        return job.model_copy(update=update)
    values.update(update)
    object.__setattr__(job, "__pydantic_fields_set__", _shared_fields_set(job.__pydantic_fields_set__ | update.keys()))
    return job


_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


def _shared_fields_set(names: set[str]) -> set[str]:
    """One set object for every job whose set fields are the same names.

    A set of some twenty field names takes about 1 kB; 10,000 jobs carried one each, though a pipeline's
    jobs share a handful of them. Jobs are frozen, and pydantic copies the set before changing it
    (`model_copy`), so sharing it changes nothing else.
    """
    key = frozenset(names)
    shared = _FIELDS_SETS.get(key)
    if shared is None:
        shared = _FIELDS_SETS[key] = set(key)
    return shared
