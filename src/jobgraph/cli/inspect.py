"""Commands that read a pipeline file without running it: validate, graph, schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from jobgraph.cli.commands import GraphFormat, OutputFormat
from jobgraph.cli.common import EXIT_INVALID, console, reported, write_plain
from jobgraph.config import Job, Pipeline, load
from jobgraph.config.for_each import max_fan_out
from jobgraph.errors import ConfigError, Problem, did_you_mean
from jobgraph.graph import Dag
from jobgraph.runners.registry import RUNNER_NAMES, settings_model
from jobgraph.schedule import parse_schedule


@reported
def validate(file: Path, runner: str | None = None, output: OutputFormat = OutputFormat.table) -> None:
    """Load the file, which checks all of it, and say what it holds and when its schedule fires next.

    As JSON, a valid file is `{"valid": true, ...}` and an invalid one `{"valid": false, "errors": [...]}`,
    each problem with its file, job, field, line, column and message; an invalid file still exits 2.
    """
    if output == OutputFormat.json:
        _validate_json(file, runner)
        return
    pipeline = load(file, runner)
    pools = sorted({job.pool or "" for job in pipeline.jobs})
    final = f", finalizer '{pipeline.finalizer.name}'" if pipeline.finalizer else ""
    jobs = f"{len(pipeline.jobs)} job{'' if len(pipeline.jobs) == 1 else 's'}"
    console.print(f"{escape(str(file))}: ok: pipeline '{pipeline.name}', {jobs} in "
                  f"{len(pools)} pool{'' if len(pools) == 1 else 's'} ({', '.join(pools)}){final}")
    if pipeline.schedule:
        schedule = parse_schedule(pipeline.schedule)
        fires = schedule.next_after(datetime.now(UTC))
        counted = " (counted from now: an interval counts from when it is deployed)" if schedule.minutes else ""
        console.print(f"schedule '{escape(pipeline.schedule)}': next fire {fires:%Y-%m-%d %H:%M:%S} UTC{counted}")


def _validate_json(file: Path, runner: str | None) -> None:
    """validate's one JSON document on stdout, for a valid file and an invalid one alike."""
    try:
        pipeline = load(file, runner)
    except ConfigError as exc:
        problems = [{"file": exc.file, "job": p.job, "field": p.field, "line": p.line, "column": p.column,
                     "message": p.message} for p in exc.problems]
        write_plain(json.dumps({"valid": False, "file": str(file), "errors": problems}, indent=2))
        raise typer.Exit(EXIT_INVALID) from None
    schedule = None
    if pipeline.schedule:
        fires = parse_schedule(pipeline.schedule).next_after(datetime.now(UTC))
        schedule = {"text": pipeline.schedule,
                    "next_fire_at": fires.astimezone(UTC).isoformat().replace("+00:00", "Z")}
    write_plain(json.dumps({
        "valid": True, "file": str(file), "pipeline": pipeline.name, "jobs": len(pipeline.jobs),
        "pools": sorted({job.pool or "" for job in pipeline.jobs}),
        "finalizer": pipeline.finalizer.name if pipeline.finalizer else None, "schedule": schedule,
    }, indent=2))


@reported
def graph(file: Path, output: GraphFormat = GraphFormat.table, dependents: str | None = None,
          runner: str | None = None) -> None:
    """Print the DAG, or the part of it below one job, in the chosen format (text formats never wrapped)."""
    pipeline = load(file, runner)
    dag = Dag.build((job.name, job.after) for job in pipeline.jobs)
    names = list(dag.order)
    if dependents is not None:
        match = {n.casefold(): n for n in names}.get(dependents.strip().casefold())
        if match is None:
            raise ConfigError(str(file), [Problem(f"no job named '{dependents}'{did_you_mean(dependents, names)}",
                                                  field="--dependents")])
        names = [match, *dag.descendants(match)]
    if output == GraphFormat.dot:
        write_plain(_dot(pipeline, dag, names))
    elif output == GraphFormat.mermaid:
        write_plain(_mermaid(pipeline, dag, names))
    elif output == GraphFormat.json:
        write_plain(json.dumps(_as_json(pipeline, dag, names), indent=2))
    else:
        console.print(_table(pipeline, dag, names))


def _levels(dag: Dag) -> dict[str, int]:
    return {name: level for level, names in enumerate(dag.levels()) for name in names}


def _table(pipeline: Pipeline, dag: Dag, names: list[str]) -> Table:
    jobs = {job.name: job for job in pipeline.jobs}
    level = _levels(dag)
    table = Table(title=f"pipeline {pipeline.name}: {len(names)} jobs", title_justify="left")
    fans = any(job.for_each is not None for job in pipeline.jobs)
    for column in ("level", "job", "after", "pool", "image", "retries", "next", *(("for each",) if fans else ())):
        table.add_column(column, overflow="fold")
    for name in sorted(names, key=lambda n: level[n]):
        job = jobs[name]
        table.add_row(str(level[name]), name, ", ".join(job.after) or "-", job.pool or "", escape(job.image),
                      str(job.retries), ", ".join(dag.successors[name]) or "-",
                      *((escape(_for_each_text(job)),) if fans else ()))
    if pipeline.finalizer is not None:
        f = pipeline.finalizer
        table.add_row("last", f.name, "(every job)", "", escape(f.image), str(f.retries), "-")
    return table


def _for_each_text(job: Job) -> str:
    """What a job fans out over, in a few words ('' when it does not): `3 items`, `extract.return_value`."""
    if job.for_each is None:
        return ""
    if isinstance(job.for_each, str):
        return job.for_each.strip().removeprefix("{{").removesuffix("}}").strip()
    return f"{len(job.for_each)} item{'' if len(job.for_each) == 1 else 's'}"


def _dot(pipeline: Pipeline, dag: Dag, names: list[str]) -> str:
    lines = [f'digraph "{pipeline.name}" {{', "  rankdir=LR;"]
    chosen = set(names)
    fanned = {job.name for job in pipeline.jobs if job.for_each is not None}
    for name in names:
        lines.append(f'  "{name}" [label="{name}[…]", shape=box3d];' if name in fanned else f'  "{name}";')
        lines.extend(f'  "{p}" -> "{name}";' for p in dag.predecessors[name] if p in chosen)
    lines.append("}")
    return "\n".join(lines)


def _mermaid(pipeline: Pipeline, dag: Dag, names: list[str]) -> str:
    lines = ["flowchart LR"]
    chosen = set(names)
    lines.extend(f'  {job.name}[["{job.name}[…]"]]' for job in pipeline.jobs if job.for_each is not None
                 and job.name in chosen)
    for name in names:
        edges = [p for p in dag.predecessors[name] if p in chosen]
        lines.extend(f"  {p} --> {name}" for p in edges)
        if not edges:
            lines.append(f"  {name}")
    return "\n".join(lines)


def _as_json(pipeline: Pipeline, dag: Dag, names: list[str]) -> dict[str, object]:
    """The DAG with each job's fields as the API's graph names them (queries.graph_of), plus level and next."""
    jobs = {job.name: job for job in pipeline.jobs}
    level = _levels(dag)
    found: list[dict[str, object]] = [
        {"name": n, "after": list(jobs[n].after), "runner": jobs[n].runner, "pool": jobs[n].pool,
         "image": jobs[n].image, "finalizer": False, "retries": jobs[n].retries, "level": level[n],
         "next": list(dag.successors[n]), "for_each": _for_each_json(jobs[n].for_each),
         "max_fan_out": None if jobs[n].for_each is None else max_fan_out(jobs[n])}
        for n in names
    ]
    if pipeline.finalizer is not None and len(names) == len(dag.order):
        f = pipeline.finalizer
        found.append({"name": f.name, "after": [], "runner": f.runner, "pool": f.pool, "image": f.image,
                      "finalizer": True, "retries": f.retries, "level": None, "next": [], "for_each": None,
                      "max_fan_out": None})
    return {"pipeline": pipeline.name, "jobs": found}


def _for_each_json(for_each: tuple[Any, ...] | str | None) -> object:
    """A job's for_each as its file gives it: a list, a text (`{{ extract.return_value }}`), or null."""
    return list(for_each) if isinstance(for_each, tuple) else for_each


def schema() -> None:
    """The pipeline model's JSON Schema, with each runner's settings section filled in."""
    document = Pipeline.model_json_schema()
    sections = document["properties"]["runners"]
    sections["properties"] = {}
    for name in RUNNER_NAMES:
        model = settings_model(name)
        if model is not None:
            sections["properties"][name] = model.model_json_schema()
    write_plain(json.dumps(document, indent=2))
