"""`jobgraph plan`: what each job's first attempt would submit, runner by runner, and when the schedule fires.

Nothing runs and nothing is written: no store is opened, no backend is contacted, and secrets are
never read, only shown as `${NAME}` references.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from jobgraph.cli.commands import PlanFormat
from jobgraph.cli.common import home, reported, write_plain
from jobgraph.config import Pipeline, load
from jobgraph.engine.run import GraphRun
from jobgraph.runners import AnyRunner, make_runner
from jobgraph.schedule import parse_schedule

PLAN_RUN_ID = "<run id>"
"""What stands for the run id, which exists only once a run starts."""

FIRES_SHOWN = 5


@reported
def plan(file: Path, runner: str | None = None, output: PlanFormat = PlanFormat.yaml) -> None:
    """Print the plan: the next fire times, then each job's first attempt as its runner would submit it."""
    pipeline = load(file, runner)
    document = {"pipeline": pipeline.name, "schedule": _fires(pipeline), "jobs": _jobs(pipeline, runner)}
    if output == PlanFormat.json:
        write_plain(json.dumps(document, indent=2))
    else:
        write_plain(yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000).rstrip())


def _jobs(pipeline: Pipeline, runner_override: str | None) -> list[dict[str, Any]]:
    """Each job's first attempt as its runner would submit it, in the order the DAG runs them."""
    runners: dict[str, AnyRunner] = {}
    placeholders = {name: f"<secret {name}>" for job in pipeline.all_jobs() for name in job.secrets}
    draft = GraphRun.draft(pipeline, home() / "logs", PLAN_RUN_ID, secrets=placeholders)
    planned = []
    for job in pipeline.all_jobs():
        name = runner_override or job.runner or "local"
        if name not in runners:
            runners[name] = make_runner(name, pipeline, home(), cwd=Path.cwd())
        spec = draft.spec_for(job, 1)
        planned.append({"job": job.name, "after": list(job.after), "pool": job.pool or "default",
                        "retries": job.retries, "timeout_secs": job.timeout, **runners[name].describe(spec)})
    return planned



def _fires(pipeline: Pipeline) -> dict[str, Any] | None:
    """The next fire times, in the schedule's own zone (an interval counts from now, as a deploy now would)."""
    if pipeline.schedule is None:
        return None
    schedule = parse_schedule(pipeline.schedule)
    moment, fires = datetime.now(UTC), []
    anchor = moment
    for _ in range(FIRES_SHOWN):
        moment = schedule.next_after(moment, anchor)
        fires.append(moment.astimezone(ZoneInfo(schedule.zone)).replace(microsecond=0).isoformat())
    return {"text": pipeline.schedule, "zone": schedule.zone, "next": fires}


class _Dumper(yaml.SafeDumper):
    """Multi-line text (a batch script) as a YAML block, so it reads as the file it is."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)
