"""Read a pipeline file (native YAML/JSON or the seed's bare array) into a validated Pipeline, or say why not."""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from jobgraph.config.fields import check_name
from jobgraph.config.model import OWN_JOBS, Defaults, Finalizer, Job, Pipeline, Pool
from jobgraph.config.run_settings import Param
from jobgraph.config.seed import SeedTask
from jobgraph.config.validate import check_pipeline
from jobgraph.errors import ConfigError, Problem


def load(path: str | Path, runner: str | None = None) -> Pipeline:
    """The one entry point: parse, convert the seed form, validate fields, then names and the graph."""
    with _collector_paused():
        return _load(Path(path), runner)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Reading a file builds hundreds of thousands of objects and no cycle: the garbage collector's rounds over
    them cost more than the reading itself (two thirds of a 10,000-job YAML file's time). It resumes after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load(file: Path, runner: str | None) -> Pipeline:
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
    raw = _read_regular_file(file)
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
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(name, [Problem(f"invalid JSON: {exc.msg}", line=exc.lineno, column=exc.colno)]) from None
        except RecursionError:
            raise ConfigError(name, [Problem("invalid JSON: nested too deeply")]) from None
        lone = _LONE_SURROGATE.search(text) if "\\u" in text else None
        if lone is not None:  # JSON spells it, json.loads keeps it; no store, argument or page can hold it
            line, column = _position(text[: lone.start(1)].encode("utf-8"))
            raise ConfigError(name, [Problem(f"invalid JSON: '{lone[1]}' is a lone surrogate, not a character",
                                             line=line, column=column)])
        return document
    import yaml  # only a YAML file needs PyYAML: validating JSON starts faster without it

    from jobgraph.config.yaml_data import safe_load

    try:
        return safe_load(text)
    except RecursionError:
        raise ConfigError(name, [Problem("invalid YAML: nested too deeply")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        message = f"invalid YAML: {exc.problem or exc}"
        if mark is None:
            raise ConfigError(name, [Problem(message)]) from None
        raise ConfigError(name, [Problem(message, line=mark.line + 1, column=mark.column + 1)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(name, [Problem(f"invalid YAML: {exc}")]) from None


_LONE_SURROGATE = re.compile(r"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                             r"|(?<![dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})")
"""A `\\uD800`-`\\uDFFF` escape that is not half of a pair, after an even number of backslashes (so an escape)."""

MAX_FILE_BYTES = 64 << 20
"""A pipeline file larger than this is a mistake (a log, an image), not a pipeline: refused before reading."""


def _read_regular_file(file: Path) -> bytes:
    """The bytes of a regular file; a FIFO, a device such as /dev/zero or a huge file is refused at once."""
    name = str(file)
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(name, [Problem("no such file")]) from None
    except OSError as exc:
        raise ConfigError(name, [Problem(f"cannot be read: {exc.strerror}")]) from None
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise ConfigError(name, [Problem("is a directory, not a pipeline file")])
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(name, [Problem("is not a regular file (a FIFO, a device or a socket): "
                                             "a pipeline file must be a plain file")])
        if status.st_size > MAX_FILE_BYTES:
            raise ConfigError(name, [Problem(f"is {status.st_size >> 20} MiB: a pipeline file may be at most "
                                             f"{MAX_FILE_BYTES >> 20} MiB")])
        chunks, size = [], 0
        while size < MAX_FILE_BYTES and (chunk := os.read(fd, 1 << 20)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)[:MAX_FILE_BYTES]
    except OSError as exc:
        raise ConfigError(name, [Problem(f"cannot be read: {exc.strerror}")]) from None
    finally:
        os.close(fd)


def seed_jobs(document: list[Any], file: Path) -> list[Job]:
    """Validate a seed-form array with the seed's own field names, and map it to native jobs."""
    if not document:
        raise ConfigError(str(file), [Problem("the list of jobs is empty")])
    problems: list[Problem] = []
    jobs: list[Job] = []
    for index, item in enumerate(document):
        if not isinstance(item, dict):
            problems.append(Problem(f"each job must be a mapping, not {_kind(item)}", job=f"#{index + 1}"))
            continue
        try:
            jobs.append(SeedTask.model_validate(item).to_job())
        except ValidationError as exc:
            label = _job_label(item, "task_name", index)
            problems.extend(_problems(exc, functools.partial(_in_job, label), SeedTask))
    if problems:
        raise ConfigError(str(file), problems)
    return jobs


def _validate(data: dict[str, Any], file: Path) -> Pipeline:
    try:
        return Pipeline.model_validate(data, context={OWN_JOBS: True})
    except ValidationError as exc:
        jobs = data.get("jobs", [])

        def locate(loc: tuple[Any, ...]) -> tuple[str | None, tuple[Any, ...]]:
            if loc[:1] == ("jobs",) and len(loc) > 1 and isinstance(loc[1], int) and loc[1] < len(jobs):
                return _job_label(jobs[loc[1]], "name", loc[1]), loc[2:]
            if loc[:1] == ("finalizer",):
                return "finalizer", loc[1:]
            params = data.get("params")
            if loc[:1] == ("params",) and len(loc) > 1 and isinstance(loc[1], int) and isinstance(params, list) \
                    and loc[1] < len(params):
                return None, ("params", _job_label(params[loc[1]], "name", loc[1]), *loc[2:])
            return None, loc

        raise ConfigError(str(file), _problems(exc, locate)) from None


def _in_job(label: str, loc: tuple[Any, ...]) -> tuple[str | None, tuple[Any, ...]]:
    return label, loc


Locate = Callable[[tuple[Any, ...]], tuple[str | None, tuple[Any, ...]]]


def _problems(exc: ValidationError, locate: Locate, root: type[BaseModel] = Pipeline) -> list[Problem]:
    """Pydantic's errors, each turned into the job and the field it is about.

    A list of jobs with a bad job in it is also reported "too short" by pydantic (the bad item is
    dropped); that echo of the real error is left out.
    """
    errors = exc.errors(include_url=False)
    bad_job = any(len(e["loc"]) > 1 and e["loc"][0] == "jobs" for e in errors)
    problems = []
    for error in errors:
        if bad_job and error["type"] == "too_short" and tuple(error["loc"]) == ("jobs",):
            continue
        job, rest = locate(tuple(error["loc"]))
        field = ".".join(str(part) for part in rest if part != "[key]") or None
        problems.append(Problem(_message(error, root), job=job, field=field))
    return problems


SECTIONS: dict[str, type[BaseModel]] = {"jobs": Job, "defaults": Defaults, "pools": Pool, "finalizer": Finalizer,
                                        "params": Param}
"""Where each part of a native file is described, for hints that name the right fields."""


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel]:
    """The model whose field is at `loc` (`jobs.3.timeoutt` -> Job)."""
    if root is not Pipeline or len(loc) < 2:
        return root
    return SECTIONS.get(str(loc[0]), root)


def _unknown_field_hint(unknown: str, model: type[BaseModel]) -> str:
    """A "did you mean" among the fields allowed right here, else where a field of that name belongs."""
    import difflib  # only a bad file needs it

    close = difflib.get_close_matches(unknown, sorted(model.model_fields), n=1, cutoff=0.7)
    if close and close[0] != unknown:
        return f"did you mean '{close[0]}'? "
    homes = [_PLACES.get(name, f"'{name}'") for name, section in SECTIONS.items()
             if unknown in section.model_fields and section is not model]
    if unknown in Pipeline.model_fields and model is not Pipeline:
        homes.insert(0, "the top level")
    if not homes:
        return ""
    where = homes[0] if len(homes) == 1 else ", ".join(homes[:-1]) + " or " + homes[-1]
    return f"'{unknown}' belongs in {where}, not here; "


_PLACES = {"jobs": "a job", "pools": "a pool"}


def _message(error: Any, root: type[BaseModel] = Pipeline) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        unknown = str(error["loc"][-1])
        hint = _unknown_field_hint(unknown, _model_at(tuple(error["loc"]), root))
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

