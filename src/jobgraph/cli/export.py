"""`jobgraph export snowflake`: print (or write) the pipeline as a Snowflake task-graph script; warnings on stderr.

Nothing runs, nothing is contacted, no store is opened: the script is for a person to review and run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from rich.markup import escape

from jobgraph.cli.common import errors, reported_as
from jobgraph.config import load
from jobgraph.config.load import read_document
from jobgraph.config.params import parse_assignments
from jobgraph.config.seed import ROOT_TASK
from jobgraph.errors import ConfigError, JobgraphError, Problem
from jobgraph.export.snowflake import export
from jobgraph.runners.snowflake_sql import check_identifier
from jobgraph.runners.spcs_spec import SpcsSettings

EXPORT_RUNNER = "spcs"
"""The file is checked as for a run on SPCS: every job becomes a job service."""


@reported_as("nothing was written.")
def snowflake(file: Path, output: Path | None = None, teardown: bool = False, root_task: str | None = None,
              params: Sequence[str] = ()) -> None:
    """Export; the warnings (what Snowflake cannot express) go to stderr, the script to stdout or `output`.
    `params` (`--param NAME=VALUE`) are the run parameters' values fixed in the script, checked as `run` checks
    them (config/params.py); the others take their defaults."""
    if output is not None and output.exists() and file.exists() and os.path.samefile(output, file):
        raise JobgraphError(f"-o {output} is the pipeline file itself: write the script elsewhere")
    pipeline = load(file, EXPORT_RUNNER)
    settings = _settings(pipeline.runners.get("spcs", {}), file)
    root = _root_task(file, pipeline.name, root_task)
    given: dict[str, object] = dict(parse_assignments(params))
    result = export(pipeline, settings, root, str(file), given)
    for warning in result.warnings:
        errors.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    text = result.teardown_script(str(file)) if teardown else result.script(str(file))
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        _write(output, text)
        errors.print(f"wrote {escape(str(output))}")


def _settings(section: object, file: Path) -> SpcsSettings:
    try:
        return SpcsSettings.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(str(file), [
            Problem(str(error["msg"]).removeprefix("Value error, "),
                    field=".".join(["runners", "spcs", *(str(part) for part in error["loc"])]))
            for error in exc.errors(include_url=False)]) from None


def _root_task(file: Path, pipeline: str, given: str | None) -> str:
    """The root task's name: the option's; else the seed's `root_task` for the seed's bare array, else the
    pipeline's name (the seed's example pipeline.yaml is named root_task)."""
    if given is not None:
        try:
            return check_identifier(given)
        except ValueError as exc:
            raise ConfigError(str(file), [Problem(str(exc), field="--root-task")]) from None
    return ROOT_TASK if isinstance(read_document(file), list) else pipeline


def _write(output: Path, text: str) -> None:
    """Write the whole script or nothing: a file beside it, renamed over `output` (a link there is replaced,
    never followed)."""
    folder = output.parent
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=folder)
    except OSError as exc:
        raise JobgraphError(f"cannot write {output}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)
        os.replace(temporary, output)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise JobgraphError(f"cannot write {output}: {exc.strerror}") from None
