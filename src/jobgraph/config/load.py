"""Read a pipeline file (native YAML/JSON or the seed's bare array) into a validated Pipeline, or say why not."""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from jobgraph.config.model import Defaults, Job, Pipeline, Pool, check_name
from jobgraph.config.seed import SeedTask
from jobgraph.config.validate import check_pipeline
from jobgraph.errors import ConfigError, Problem

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML was built with it: ten times faster on big files."""


def load(path: str | Path, runner: str | None = None) -> Pipeline:
    """The one entry point: parse, convert the seed form, validate fields, then names and the graph."""
    file = Path(path)
    document = read_document(file)
    if isinstance(document, list):
        data: dict[str, Any] = {"name": _name_from_stem(file), "jobs": seed_jobs(document, file)}
    elif isinstance(document, dict):
        data = dict(document)
        included = _included_files(data.get("jobs_from"), file)
        if "jobs" in data or included:
            data["jobs"] = list(_as_list(data.get("jobs", []), file, "jobs"))
            for path in included:
                data["jobs"].extend(seed_jobs(_read_array(path), path))
            if not data["jobs"]:
                raise ConfigError(str(file), [Problem("the list of jobs is empty", field="jobs")])
    else:
        raise ConfigError(
            str(file),
            [Problem("the file must hold a list of jobs (seed form) or a mapping (native form), "
                     f"not {_kind(document)}")],
        )
    return check_pipeline(_validate(data, file), str(file), runner)


def read_document(file: Path) -> Any:
    """Parse JSON or YAML; parse errors carry the line and column."""
    name = str(file)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(name, [Problem("no such file")]) from None
    except IsADirectoryError:
        raise ConfigError(name, [Problem("is a directory, not a pipeline file")]) from None
    except OSError as exc:
        raise ConfigError(name, [Problem(f"cannot be read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _position(raw[: exc.start])
        raise ConfigError(
            name, [Problem(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x})", line=line, column=column)]
        ) from None
    if not text.strip():
        raise ConfigError(name, [Problem("the file is empty")])
    if file.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(name, [Problem(f"invalid JSON: {exc.msg}", line=exc.lineno, column=exc.colno)]) from None
        except RecursionError:
            raise ConfigError(name, [Problem("invalid JSON: nested too deeply")]) from None
    try:
        return yaml.load(text, Loader=_YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        message = f"invalid YAML: {exc.problem or exc}"
        if mark is None:
            raise ConfigError(name, [Problem(message)]) from None
        raise ConfigError(name, [Problem(message, line=mark.line + 1, column=mark.column + 1)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(name, [Problem(f"invalid YAML: {exc}")]) from None


def seed_jobs(document: list[Any], file: Path) -> list[dict[str, Any]]:
    """Validate a seed-form array with the seed's own field names, and map it to native jobs."""
    if not document:
        raise ConfigError(str(file), [Problem("the list of jobs is empty")])
    problems: list[Problem] = []
    jobs: list[dict[str, Any]] = []
    for index, item in enumerate(document):
        if not isinstance(item, dict):
            problems.append(Problem(f"each job must be a mapping, not {_kind(item)}", job=f"#{index + 1}"))
            continue
        try:
            jobs.append(SeedTask.model_validate(item).to_job())
        except ValidationError as exc:
            label = _job_label(item, "task_name", index)
            problems.extend(_problems(exc, functools.partial(_in_job, label)))
    if problems:
        raise ConfigError(str(file), problems)
    return jobs


def _validate(data: dict[str, Any], file: Path) -> Pipeline:
    try:
        return Pipeline.model_validate(data)
    except ValidationError as exc:
        jobs = data.get("jobs", [])

        def locate(loc: tuple[Any, ...]) -> tuple[str | None, tuple[Any, ...]]:
            if loc[:1] == ("jobs",) and len(loc) > 1 and isinstance(loc[1], int) and loc[1] < len(jobs):
                return _job_label(jobs[loc[1]], "name", loc[1]), loc[2:]
            if loc[:1] == ("finalizer",):
                return "finalizer", loc[1:]
            return None, loc

        raise ConfigError(str(file), _problems(exc, locate)) from None


def _in_job(label: str, loc: tuple[Any, ...]) -> tuple[str | None, tuple[Any, ...]]:
    return label, loc


Locate = Callable[[tuple[Any, ...]], tuple[str | None, tuple[Any, ...]]]


def _problems(exc: ValidationError, locate: Locate) -> list[Problem]:
    """Pydantic's errors, each turned into the job and the field it is about."""
    problems = []
    for error in exc.errors(include_url=False):
        job, rest = locate(tuple(error["loc"]))
        field = ".".join(str(part) for part in rest if part != "[key]") or None
        problems.append(Problem(_message(error), job=job, field=field))
    return problems


KNOWN_FIELDS = sorted({name for model in (Pipeline, Job, Defaults, Pool, SeedTask) for name in model.model_fields})
"""Every field name a pipeline file may use, for "did you mean" hints."""


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        unknown = str(error["loc"][-1])
        close = difflib.get_close_matches(unknown, KNOWN_FIELDS, n=1, cutoff=0.7)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown field ({hint}`jobgraph schema` lists the fields a pipeline takes)"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    if kind not in ("value_error",) and not isinstance(value, dict | list):
        shown = repr(value)
        message += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    return message


def _job_label(item: Any, key: str, index: int) -> str:
    if isinstance(item, dict) and isinstance(item.get(key), str) and item[key].strip():
        return str(item[key]).strip()
    return f"#{index + 1}"


def _included_files(value: Any, file: Path) -> list[Path]:
    if value is None:
        return []
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.strip() for p in paths):
        raise ConfigError(str(file), [Problem("must be a path or a list of paths", field="jobs_from")])
    return [file.parent / p for p in paths]


def _read_array(file: Path) -> list[Any]:
    document = read_document(file)
    if not isinstance(document, list):
        raise ConfigError(str(file), [Problem(f"jobs_from must name a seed-form list of jobs, not {_kind(document)}")])
    return document


def _as_list(value: Any, file: Path, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(str(file), [Problem(f"must be a list of jobs, not {_kind(value)}", field=field)])
    return value


def _name_from_stem(file: Path) -> str:
    """A bare seed array has no name: use the file's stem, made into a valid name."""
    stem = "".join(c if c.isalnum() or c in "_$" else "_" for c in file.stem) or "pipeline"
    if not (stem[0].isalpha() or stem[0] == "_"):
        stem = "_" + stem
    return check_name(stem[:255])


def _position(prefix: bytes) -> tuple[int, int]:
    line = prefix.count(b"\n") + 1
    return line, len(prefix) - (prefix.rfind(b"\n") + 1) + 1


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), f"a {type(value).__name__}"
    )

