"""The pipeline as jobgraph understands it: pydantic models that are also the JSON Schema editors check against."""

from __future__ import annotations

import os
import re
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
    WithJsonSchema,
    field_validator,
    model_validator,
)

from jobgraph.runners.base import DEFAULT_LOG_LIMIT
from jobgraph.runners.registry import RUNNER_NAMES

MAX_RETRIES = 100
"""More retries than this is almost always a typo; Snowflake caps task retries at 10."""

MAX_DURATION_SECS = 7 * 24 * 3600.0


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,254}\Z")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def check_name(value: str) -> str:
    """Names follow Snowflake's unquoted identifiers, so they are safe in SQL, paths and labels."""
    name = value.strip()
    if not name:
        raise ValueError("a name may not be empty")
    if not _NAME.match(name):
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '_' and '$', "
            "starting with a letter or '_' (at most 255 characters)"
        )
    return name


def _name(value: Any) -> str:
    """A name field: a string (not a number that looks like one), checked as `check_name` checks it; one call."""
    if not isinstance(value, str):
        raise ValueError(f"expected a name (a string), got {type(value).__name__}")
    return check_name(value)


def parse_duration(value: Any) -> float:
    """Accept seconds as a number, or text such as `90s`, `5m`, `1h30m`, `500ms`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '30s', '5m' or '1h30m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"{value!r} is not a duration such as 30, '30s', '5m' or '1h30m'")
            seconds = sum(float(n) * _UNIT_SECS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 30, '30s', '5m' or '1h30m'")
    if not 0 <= seconds <= MAX_DURATION_SECS:
        raise ValueError(f"a duration must be between 0 and 7 days, got {value!r}")
    return seconds


def no_nul(text: str) -> str:
    """Refuse a NUL byte where a string becomes a command-line argument, an environment value or a path.

    No operating system can pass one there; found at run time it would be an internal error.
    """
    if "\x00" in text:
        raise ValueError("contains a NUL byte (\\x00), which no command line, environment or path can carry")
    return text


def parse_log_limit(value: Any) -> int:
    """A log size cap: bytes as a number, or text such as `100m`, `1g`, `64k`; at least 1k."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected a size such as 100m, 1g or 64k")
    size = value if isinstance(value, int) else memory_bytes(value)
    if size < 1 << 10:
        raise ValueError(f"{value!r} is too small: a log limit is at least 1k")
    return size


def _check_webhook(url: str) -> str:
    """A webhook is an absolute http(s) URL with a host; nothing else is ever fetched."""
    from urllib.parse import urlsplit  # only a pipeline with a webhook needs it

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise ValueError("is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if any(c in url for c in "\r\n\x00 "):
        raise ValueError("may not contain spaces, line breaks or NUL")
    return url


def _check_schedule(text: str) -> str:
    from jobgraph.schedule import parse_schedule  # only a pipeline with a schedule needs cron's parser

    parse_schedule(text)
    return text


def _split_after(value: Any) -> Any:
    """`after` may be a list or the seed's comma-separated string."""
    if isinstance(value, str):
        return [part for part in value.split(",")] if value.strip() else []
    return value


Name = Annotated[str, BeforeValidator(_name)]
def _check_runner_name(value: str) -> str:
    if value not in RUNNER_NAMES:
        raise ValueError(f"unknown runner {value!r}; the runners are {', '.join(RUNNER_NAMES)}")
    return value


RunnerName = Annotated[str, AfterValidator(_check_runner_name), Field(json_schema_extra={"enum": list(RUNNER_NAMES)})]
NetworkMode = Literal["none", "bridge", "host"]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Retries = Annotated[int, Field(strict=True, ge=0, le=MAX_RETRIES)]
Text = Annotated[str, AfterValidator(no_nul)]
Command = Annotated[tuple[Annotated[str, Field(min_length=1), AfterValidator(no_nul)], ...], Field(min_length=1)]
LogLimit = Annotated[int, BeforeValidator(parse_log_limit)]

RETRY_WORDS = ("timeout", "error", "oom", "lost")
"""What `retry_on` / `no_retry_on` name besides exit codes: a timeout, an attempt the runner could not start
or follow, an out-of-memory kill (containers, Kubernetes, Slurm), a remote node lost or the pod evicted."""


def _retry_condition(value: Any) -> int | str:
    """An exit code (1-255) or one of RETRY_WORDS, lower-cased."""
    if isinstance(value, bool):
        raise ValueError(f"expected an exit code (1-255) or one of {', '.join(RETRY_WORDS)}, got {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int):
        if not 1 <= value <= 255:
            raise ValueError(f"exit code {value} cannot fail an attempt: use 1-255")
        return value
    if isinstance(value, str) and value.strip().lower() in RETRY_WORDS:
        return value.strip().lower()
    raise ValueError(f"{value!r} is neither an exit code (1-255) nor one of {', '.join(RETRY_WORDS)}")


RetryCondition = Annotated[int | str, BeforeValidator(_retry_condition), WithJsonSchema(
    {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 255}, {"enum": list(RETRY_WORDS)}]})]
RetryConditions = Annotated[tuple[RetryCondition, ...], Field(max_length=256)]


INSTANCE_FAMILIES: dict[str, tuple[float, int]] = {
    "CPU_X64_XS": (1, 6 << 30),
    "CPU_X64_S": (3, 13 << 30),
    "CPU_X64_M": (6, 28 << 30),
    "CPU_X64_L": (28, 116 << 30),
    "HIGHMEM_X64_S": (6, 58 << 30),
    "HIGHMEM_X64_M": (28, 240 << 30),
    "HIGHMEM_X64_L": (124, 984 << 30),
}
"""Snowflake compute pool instance families: (vCPUs, memory) per node, as Snowflake documents them."""

InstanceFamily = Literal[
    "CPU_X64_XS", "CPU_X64_S", "CPU_X64_M", "CPU_X64_L", "HIGHMEM_X64_S", "HIGHMEM_X64_M", "HIGHMEM_X64_L"
]

_MEMORY = re.compile(r"(\d+)([kmg]?)b?", re.IGNORECASE)


def memory_bytes(text: str) -> int:
    """`512m` -> bytes, as container engines read memory limits."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a memory size such as 512m or 6g")
    return int(match[1]) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match[2].lower()]


def check_memory(text: str) -> str:
    """Memory sizes must parse and be at least 4 MiB (smaller limits make engines refuse to start)."""
    if memory_bytes(text) < 4 << 20:
        raise ValueError(f"{text!r} is too small: a container needs at least 4m")
    return text


class TriggerRule(StrEnum):
    """When a job runs, given how its predecessors ended."""

    ALL_SUCCESS = "all_success"  #: only if every predecessor succeeded (the safe default)
    ALL_DONE = "all_done"  #: once every predecessor finished, however it ended (the seed's behaviour)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pool(_Model):
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


class Defaults(_Model):
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


class Job(_Model):
    """One node of the DAG: an image run with args, after its predecessors."""

    name: Name
    image: Text = Field(min_length=1)
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


NotifyEvent = Literal["run_failed", "run_succeeded", "job_failed"]

MAX_NOTIFY_SECS = 600.0


class Notify(_Model):
    """Whom to tell when a run fails or succeeds, or a job fails: a webhook (JSON or Slack) or a command hook."""

    on: tuple[NotifyEvent, ...] = Field(default=("run_failed",), min_length=1,
                                        description="run_failed, run_succeeded, job_failed [default: run_failed]")
    webhook: Annotated[str, AfterValidator(_check_webhook)] | None = Field(
        default=None, description="An http(s) URL to POST to (a URL holding a token belongs in webhook_secret)")
    webhook_secret: Name | None = Field(
        default=None, description="The environment variable of jobgraph's that holds the URL: never stored or shown")
    format: Literal["json", "slack"] = Field(default="json", description="json, or slack: a {\"text\": ...} body")
    command: Command | None = Field(default=None, description="A hook: argv run with the JSON body on its stdin")
    timeout: Duration = Field(default=10.0, gt=0, le=MAX_NOTIFY_SECS,
                              description="Seconds one notification may take, every try included; a run waits at "
                              "most this long at its end for the ones still being sent")
    retries: int = Field(default=3, strict=True, ge=0, le=10, description="Tries after the first, with backoff")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted `on:` key as the boolean true (as GitHub Actions files know): take it back."""
        if isinstance(value, dict) and True in value and "on" not in value:
            value = {("on" if key is True else key): item for key, item in value.items()}
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Notify:
        given = [name for name in ("webhook", "webhook_secret", "command") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of webhook, webhook_secret or command" + (
                f" (got {', '.join(given)})" if given else ""))
        if self.command is not None and self.format != "json":
            raise ValueError("format is for webhooks: a command gets the JSON body on its stdin")
        return self


_J = TypeVar("_J", bound="Job")

OWN_JOBS = "own_jobs"
"""Validation context key: the Job instances given were built for this pipeline alone (the seed form's)."""


class Pipeline(_Model):
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
    job.__pydantic_fields_set__.update(update)
    return job
