"""Partial runs and targeted retries: which of a pipeline's jobs one run runs (`run --only/--from/--until`), and
which of an ended run's jobs a retry runs again (`retry --job [--downstream]`, Airflow's "clear").

Names are checked against the pipeline before anything is recorded (each unknown one named, with a
did-you-mean); the choice is kept as the JSON object stored in runs.selection:

    {"only": [...], "from": [...], "until": [...], "jobs": [...]}    a partial run ("jobs": what it runs)
    {"retries": [{"run_attempt": 2, "jobs": [...], "downstream": true, "rerun": [...]}]}   targeted retries

A run without "jobs" runs every job. A selected job whose predecessor is outside the selection does not
wait for it (`restricted` drops that edge); the finalizer always runs and is never selected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jobgraph.errors import ConfigError, Problem, did_you_mean
from jobgraph.graph import Dag

if TYPE_CHECKING:  # the store's readers (show, history) use this module without the config models
    from jobgraph.config.model import Job, Pipeline

Selection = Mapping[str, Any]
"""A run's selection as stored (runs.selection), a JSON object."""

MAX_NAMED = 20
"""The most unknown names one option's error lists, each with its did-you-mean; the rest are counted."""


def names(values: Iterable[str], option: str = "--only") -> tuple[str, ...]:
    """The job names of a repeatable, comma-separated option (`--only a,b --only c`), blanks dropped, in order.

    ConfigError when the option was given but names no job (`--only ""`): that must not mean "every job".
    """
    given = False
    found: dict[str, None] = {}
    for value in values:
        given = True
        for name in value.split(","):
            if name.strip():
                found[name.strip()] = None
    if given and not found:
        raise ConfigError("the command line", [Problem("names no job", field=option)])
    return tuple(found)


def _resolve(pipeline: Pipeline, asked: Sequence[str], option: str, among: Sequence[str] | None = None,
             run_id: str | None = None) -> tuple[list[str], list[Problem]]:
    """The jobs `asked` names (exactly, else the one job with that name in any case), and a Problem per unknown one.

    `among`: the jobs that may be named (a partial run's); the others are told apart from unknown names.
    """
    known = {job.name: None for job in pipeline.jobs}
    allowed = set(known if among is None else among)
    by_key: dict[str, list[str]] = {}
    for name in known:
        by_key.setdefault(name.casefold(), []).append(name)
    found: dict[str, None] = {}
    problems: list[Problem] = []
    finalizer = pipeline.finalizer.name if pipeline.finalizer else None
    unknown = 0
    for name in asked:
        matches = [name] if name in known else by_key.get(name.casefold(), [])
        if len(matches) == 1 and matches[0] in allowed:
            found[matches[0]] = None
        elif len(matches) == 1:
            shown = ", ".join((among or [])[:20]) + (", ..." if len(among or ()) > 20 else "")
            problems.append(Problem(f"job {matches[0]!r} is not part of run {run_id}: it ran only {shown}",
                                    field=option))
        elif finalizer is not None and name.casefold() == finalizer.casefold():
            problems.append(Problem(f"{name!r} is the finalizer: it always runs and is not chosen", field=option))
        else:
            unknown += 1
            if unknown <= MAX_NAMED:
                shown = name if len(name) <= 80 else name[:80] + "..."
                problems.append(Problem(f"no job named {shown!r} in pipeline {pipeline.name}"
                                        f"{did_you_mean(name, known)}", field=option))
    if unknown > MAX_NAMED:
        problems.append(Problem(f"and {unknown - MAX_NAMED} more names that are no job of pipeline {pipeline.name}",
                                field=option))
    return list(found), problems


def dag_of(pipeline: Pipeline) -> Dag:
    """The pipeline's DAG (its jobs, not the finalizer)."""
    return Dag.build((job.name, job.after) for job in pipeline.jobs)


def choose(pipeline: Pipeline, source: str, only: Sequence[str] = (), start: Sequence[str] = (),
           until: Sequence[str] = ()) -> dict[str, Any] | None:
    """The selection of a partial run, or None when nothing was asked (the whole pipeline).

    --only runs exactly the jobs named; --from each named job and everything downstream of it; --until
    each named job and everything upstream of it. Given together, a run runs the jobs all of them pick
    (`--from b --until d`: b, d and what lies between). ConfigError naming `source` for an unknown name
    or a choice that picks no job.
    """
    if not (only or start or until):
        return None
    problems: list[Problem] = []
    picked: list[set[str]] = []
    dag = dag_of(pipeline)
    for option, asked, widen in (("--only", only, None), ("--from", start, dag.descendants),
                                 ("--until", until, dag.ancestors)):
        if not asked:
            continue
        found, wrong = _resolve(pipeline, asked, option)
        problems.extend(wrong)
        chosen = set(found)
        if widen is not None:
            for name in found:
                chosen.update(widen(name))
        picked.append(chosen)
    if problems:
        raise ConfigError(source, problems)
    jobs = set.intersection(*picked)
    if not jobs:
        raise ConfigError(source, [Problem(f"{_described(only, start, until)} picks no job of pipeline "
                                           f"{pipeline.name}", field=_options(only, start, until))])
    left_out = _fan_out_sources_left_out(pipeline, jobs)
    if left_out:
        raise ConfigError(source, [Problem(message, field=_options(only, start, until).split("/")[0])
                                   for message in left_out])
    return {"only": list(only), "from": list(start), "until": list(until),
            "jobs": [job.name for job in pipeline.jobs if job.name in jobs]}


def _fan_out_sources_left_out(pipeline: Pipeline, jobs: set[str]) -> list[str]:
    """Why the choice cannot run: a chosen job fans out over the return value of a job the choice leaves out
    (it would run with no list and fail, which no choice should mean)."""
    from jobgraph.config.for_each import source_of  # only a partial run needs it

    problems = []
    for job in pipeline.jobs:
        if job.name not in jobs or job.for_each is None:
            continue
        try:
            predecessor = source_of(job.for_each).predecessor
        except ValueError:  # load refused it already
            continue
        named = next((p for p in job.after if p.casefold() == (predecessor or "").casefold()), None)
        if named is not None and named not in jobs:
            problems.append(f"job {job.name!r} fans out over the return value of {named!r}, which this choice "
                            f"leaves out (add it, or use --until {job.name})")
    return problems


def _options(only: Sequence[str], start: Sequence[str], until: Sequence[str]) -> str:
    return "/".join(option for option, asked in (("--only", only), ("--from", start), ("--until", until)) if asked)


def _described(only: Sequence[str], start: Sequence[str], until: Sequence[str]) -> str:
    parts = [f"{option} {','.join(asked)}" for option, asked in (("--only", only), ("--from", start),
                                                                  ("--until", until)) if asked]
    return " ".join(parts)


def selected_jobs(selection: Selection | None) -> frozenset[str] | None:
    """The jobs a run runs (its partial selection), or None: every job of its pipeline."""
    if not selection or selection.get("jobs") is None:
        return None
    return frozenset(str(name) for name in selection["jobs"])


def restricted(pipeline: Pipeline, jobs: frozenset[str] | None) -> list[Job]:
    """The pipeline's jobs a run runs, in file order, each waiting only for its predecessors that it runs too."""
    if jobs is None:
        return list(pipeline.jobs)
    return [job if set(job.after) <= jobs else job.model_copy(update={"after": tuple(p for p in job.after
                                                                                     if p in jobs)})
            for job in pipeline.jobs if job.name in jobs]


def rerun(pipeline: Pipeline, selection: Selection | None, asked: Sequence[str], downstream: bool,
          run_id: str, field: str = "--job") -> tuple[list[str], list[str]]:
    """The jobs of an ended run that `retry --job` names (as the pipeline spells them), and those it runs again:
    the ones named and, with `downstream`, every job of the run that depends on them, in file order.
    ConfigError for a name that is not one of the run's jobs, naming `field` (the API's body says `jobs`)."""
    chosen = selected_jobs(selection)
    jobs = restricted(pipeline, chosen)
    among = [job.name for job in jobs] if chosen is not None else None
    found, problems = _resolve(pipeline, asked, field, among, run_id)
    if problems:
        raise ConfigError(f"run {run_id}", problems)
    dag = Dag.build((job.name, job.after) for job in jobs)
    again = set(found)
    if downstream:
        for name in found:
            again.update(dag.descendants(name))
    return found, [job.name for job in jobs if job.name in again]


def with_retry(selection: Selection | None, run_attempt: int, asked: Sequence[str], downstream: bool,
               again: Sequence[str]) -> dict[str, Any]:
    """The run's selection with a targeted retry added to its `retries` (every one kept, oldest first)."""
    base = dict(selection or {})
    retries = list(base.get("retries") or ())
    retries.append({"run_attempt": run_attempt, "jobs": list(asked), "downstream": downstream,
                    "rerun": list(again)})
    return {**base, "retries": retries}


def stored(selection: Selection | None) -> str | None:
    """The selection as runs.selection holds it."""
    return None if not selection else json.dumps(selection, separators=(",", ":"))


def loaded(text: str | None) -> dict[str, Any] | None:
    """A stored selection (None for a whole run, or a value that is not a JSON object)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def summary(selection: Selection | None) -> str:
    """One line for a person: how the run was chosen and which jobs retries ran again; '' for a whole run."""
    if not selection:
        return ""
    parts = []
    asked = [f"--{option} {','.join(selection.get(option) or ())}" for option in ("only", "from", "until")
             if selection.get(option)]
    if asked:
        parts.append(f"partial run ({' '.join(asked)}): {len(selection.get('jobs') or ())} jobs")
    for retry in selection.get("retries") or ():
        how = " and downstream" if retry.get("downstream") else ""
        count = len(retry.get("rerun") or ())
        parts.append(f"attempt {retry.get('run_attempt')} reran {', '.join(retry.get('jobs') or ())}{how}"
                     f" ({count} job{'' if count == 1 else 's'})")
    return "; ".join(parts)
