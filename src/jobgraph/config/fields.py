"""The field types a pipeline's models share, and the parsers behind them: names, durations, sizes,
commands, retry conditions, for_each forms.

Split from config/model.py so that the models read as the pipeline's shape, while what each field
accepts (and the error it gives) is checked here, one function per kind of value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, WithJsonSchema

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


_FOR_EACH_FORMS = "expected a list, '{{ params.NAME }}', '{{ JOB.return_value }}' or {from: JOB}"


def _for_each_from(value: Any) -> Any:
    """`for_each: {from: JOB}` is the same as `for_each: "{{ JOB.return_value }}"`, and stored so; a list's items
    must be JSON values (YAML reads `2024-01-01` as a date: quoted, it is a string)."""
    if isinstance(value, dict):
        if set(value) != {"from"} or not isinstance(value["from"], str):
            raise ValueError(_FOR_EACH_FORMS)
        return f"{{{{ {value['from'].strip()}.return_value }}}}"
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            bad = _not_json(item)
            if bad is not None:
                raise ValueError(f"item {index} holds a {bad}, which is not a JSON value (quote it: a string)")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{_FOR_EACH_FORMS}, got {type(value).__name__}")
    return value


def _not_json(value: Any) -> str | None:
    """The type name of the first thing in `value` that is not a JSON value, or None if it all is."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            if not all(isinstance(key, str) for key in current):
                return "mapping with a key that is not a string"
            stack.extend(current.values())
        elif isinstance(current, list | tuple):
            stack.extend(current)
        elif not (current is None or isinstance(current, str | int | float | bool)):
            return type(current).__name__
        elif isinstance(current, float) and current != current:
            return "NaN"
    return None


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
ForEach = Annotated[tuple[JsonValue, ...] | Text, BeforeValidator(_for_each_from), WithJsonSchema({"anyOf": [
    {"type": "array"}, {"type": "string", "pattern": r"^\s*\{\{.*\}\}\s*$"},
    {"type": "object", "properties": {"from": {"type": "string"}}, "required": ["from"],
     "additionalProperties": False}]})]

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


class FrozenModel(BaseModel):
    """The base of every pipeline model: unknown keys are errors, and a validated pipeline never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
