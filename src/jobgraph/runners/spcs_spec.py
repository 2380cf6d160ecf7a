"""What the SPCS runner submits for one attempt: its settings, the job service's name and its specification.

Kept apart from the runner and from any Snowflake client, so that `jobgraph plan --runner spcs` and the
exporter print exactly what a run sends, with nothing but pydantic and PyYAML loaded. One attempt is one
job service (`EXECUTE JOB SERVICE ... ASYNC = TRUE`, spcs_statements.py) whose specification has:

- one container `main`: the job's image as Snowflake names it (an image repository path such as the seed's
  `/tutorial_db/data_schema/tutorial_repository/my_job_image:latest`), the job's args as `args` (the
  image's entrypoint stays), its env (no secret value: those are redacted, and the job's own `secrets` are
  left out of `env`);
- each of the job's `secrets` as a `snowflakeSecret` reference (`runners.spcs.secrets` maps the env name to
  the Snowflake secret object), read by Snowflake into that env variable: jobgraph never reads the value;
- resources from the pool's own `cpu` / `memory` (requests, and the memory also as the limit); a pool that
  only names its `instance_family` leaves them to Snowflake, which derives them from the pool's nodes
  (a request for a whole node is refused: its system components take part of it);
- `logExporters` at INFO, so the log reaches the event table and survives the node being reclaimed.

A job service has no return value and no host paths: a job's `volumes` or `workdir` is refused, naming
the job and the field, rather than silently dropped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec
from jobgraph.runners.redaction import redactor_for
from jobgraph.runners.snowflake_sql import check_identifier, check_object_name

if TYPE_CHECKING:
    from jobgraph.config.model import Pool

CONTAINER = "main"
"""The one container of each job service: the runner reads its status, message and log."""

MAX_SERVICE_NAME = 63
"""The longest service name jobgraph makes (Snowflake's DNS-bound limit for service names)."""

PREFIX = "JG_"
"""Every job service jobgraph makes starts with this: `SHOW JOB SERVICES LIKE 'JG_...%'` finds them."""

HOST_ONLY_ENV = frozenset({"JOBGRAPH_RETURN_VALUE_FILE"})
"""Variables that name a path on jobgraph's host, meaningless in a job service (which has no return value)."""

SECRET_KEY = "secret_string"
"""The key of a generic-string Snowflake secret, read into the job's env variable."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _identifier(value: str) -> str:
    return check_identifier(value)


def _object_name(value: str) -> str:
    return check_object_name(value)


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name (letters, digits and '_')")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]
ObjectName = Annotated[str, AfterValidator(_object_name)]
EnvName = Annotated[str, AfterValidator(_env_name)]


class SpcsSettings(BaseModel):
    """The `runners: {spcs: {...}}` section of a pipeline file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    connection: str | None = Field(
        None, min_length=1, description="A connection of connections.toml (~/.snowflake/connections.toml); unset: "
        "the default connection, or the SNOWFLAKE_* variables (SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, "
        "SNOWFLAKE_PRIVATE_KEY_FILE for key-pair auth...).")
    database: Identifier | None = Field(None, description="The database of the job services; the connection's "
                                        "if unset.")
    schema_: Identifier | None = Field(None, alias="schema", description="The schema of the job services; the "
                                       "connection's if unset.")
    warehouse: Identifier | None = Field(None, description="QUERY_WAREHOUSE of each job service: the warehouse "
                                         "its queries run on (the seed's jobs run SQL).")
    external_access_integrations: list[Identifier] = Field(
        default_factory=list, description="EXTERNAL_ACCESS_INTEGRATIONS of each job service (network egress).")
    poll_secs: float = Field(5.0, ge=0.05, le=3600, description="Seconds between two polls of the running job "
                             "services (one SHOW JOB SERVICES for all of them).")
    pending_limit_secs: float = Field(
        900.0, gt=0, le=86400, description="Seconds a job service may stay PENDING (no node free in its compute "
        "pool, an image SPCS cannot pull) before the attempt is an ERROR with SPCS's reason and the service is "
        "dropped. A pool resuming or adding a node takes minutes: leave room for it.")
    log_lines: int = Field(1000, ge=1, le=100_000, description="Lines of a job service's log read once it "
                           "ended (SYSTEM$GET_SERVICE_LOGS).")
    secrets: dict[EnvName, ObjectName] = Field(
        default_factory=dict, description="A job secret (its env name) -> the Snowflake secret object (generic "
        "string) Snowflake reads it from, e.g. {DB_PASSWORD: my_db_password}. The value never passes jobgraph.")
    emulator: bool = Field(False, description="Run each job service through jobgraph's local SPCS emulator "
                           "(Podman), not Snowflake: no account is contacted.")

    @property
    def schema_name(self) -> str | None:
        """The `schema` setting (named apart from pydantic's own `schema`)."""
        return self.schema_


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length].upper()


def _word(text: str) -> str:
    """Upper-case letters, digits and single underscores (what Snowflake resolves an unquoted name to)."""
    return re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_")


def run_prefix(run_id: str) -> str:
    """`JG_<RUN8>_`: the start of every service name of a run (its first 8 letters and digits)."""
    return f"{PREFIX}{(_word(run_id).replace('_', '') or 'RUN')[:8]}_"


def service_name(spec: JobSpec) -> str:
    """The attempt's job service: `JG_<RUN8>_<JOB>_<ATTEMPT>`, a valid identifier of at most 63 characters.

    Stable (a restarted jobgraph finds the same attempt by it) and unique per run, job and attempt: where
    the job's name had to be changed (a `$`) or cut (too long), a digest of the exact run id, job and
    attempt follows, so two jobs never share one service.
    """
    prefix = run_prefix(spec.run_id)
    job = _word(spec.task)
    tail = f"_{spec.attempt}"
    name = f"{prefix}{job}{tail}"
    if job == spec.task.upper() and len(name) <= MAX_SERVICE_NAME:
        return name
    digest = "_" + _digest("\x00".join((spec.run_id, spec.task, str(spec.attempt))), 8)
    room = MAX_SERVICE_NAME - len(prefix) - len(tail) - len(digest)
    job = job[:room].rstrip("_")
    return check_identifier(f"{prefix}{job}{tail}{digest}" if job else f"{prefix}{spec.attempt}{digest}")


def comment_for(spec: JobSpec) -> str:
    """The COMMENT of an attempt's service: what made it, so an earlier try of the same attempt is recognised."""
    return f"jobgraph pipeline {spec.pipeline} run {spec.run_id} job {spec.task} attempt {spec.attempt}"


def secret_object(name: str, settings: SpcsSettings) -> str:
    """The Snowflake secret a job secret is read from, or a RunnerError saying how to map it."""
    problem = _secret_problem(name, settings)
    if problem:
        raise RunnerError(problem)
    return settings.secrets[name]


def _secret_problem(name: str, settings: SpcsSettings) -> str | None:
    if name in settings.secrets:
        return None
    return (f"secret {name} has no Snowflake secret: SPCS reads a job's secrets from Snowflake secret objects; "
            f"map it in runners.spcs.secrets, e.g. {{{name}: my_{name.lower()}_secret}}")


def job_problems(volumes: Mapping[str, str], workdir: str | None, secrets: Iterable[str],
                 settings: SpcsSettings) -> list[tuple[str, str]]:
    """(field, message) for what of a job cannot become a job service, for `jobgraph validate`: a volume or a
    working directory (host things SPCS cannot take), a secret with no Snowflake secret."""
    found: list[tuple[str, str | None]] = []
    if volumes:
        found.append(("volumes", "a job service cannot mount host folders; SPCS volumes (stages, block "
                                 "storage) are not supported by jobgraph's spcs runner: remove the volumes"))
    if workdir:
        found.append(("workdir", "a job service's working directory is its image's: set WORKDIR in the image "
                                 "and remove workdir"))
    found += [("secrets", _secret_problem(name, settings)) for name in secrets]
    return [(field, message) for field, message in found if message]


def memory_quantity(size: int) -> str:
    """Bytes as an SPCS memory amount: `Gi`, `Mi` or `Ki` when exact, else plain bytes."""
    for unit, shift in (("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def _resources(pool: Pool | None) -> dict[str, dict[str, Any]]:
    """Requests (and the memory limit) from the pool's own cpu and memory; none from an instance family alone."""
    if pool is None:
        return {}
    from jobgraph.config.fields import memory_bytes

    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if pool.cpu:
        requests["cpu"] = pool.cpu
    if pool.memory:
        requests["memory"] = limits["memory"] = memory_quantity(memory_bytes(pool.memory))
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def job_spec(spec: JobSpec, settings: SpcsSettings, pool: Pool | None) -> dict[str, Any]:
    """The SPCS specification of one attempt's job service; a RunnerError naming the job if it cannot be made."""
    problems = job_problems(spec.volumes, spec.workdir, spec.secret_names, settings)
    if problems:
        field, message = problems[0]
        raise RunnerError(f"job {spec.task}, field {field}: {message}")
    redactor = redactor_for(spec.secret_values)
    env = {name: redactor.text(value) for name, value in spec.env.items()
           if name not in spec.secret_names and name not in HOST_ONLY_ENV}
    container: dict[str, Any] = {"name": CONTAINER, "image": spec.image}
    if spec.args:
        container["args"] = [redactor.text(arg) for arg in spec.args]
    if env:
        container["env"] = env
    resources = _resources(pool)
    if resources:
        container["resources"] = resources
    if spec.secret_names:
        container["secrets"] = [
            {"snowflakeSecret": {"objectName": secret_object(name, settings)}, "envVarName": name,
             "secretKeyRef": SECRET_KEY}
            for name in sorted(spec.secret_names)]
    return {"spec": {"containers": [container], "logExporters": {"eventTableConfig": {"logLevel": "INFO"}}}}


def spec_yaml(doc: Mapping[str, Any]) -> str:
    """The specification as the YAML text `FROM SPECIFICATION` takes (block style, keys in order)."""
    return yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
