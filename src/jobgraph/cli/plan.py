"""`jobgraph plan`: what each job's first attempt would submit, runner by runner, and when the schedule fires.

Nothing runs and nothing is written: no store is opened, no backend is contacted, and secrets are
never read, only shown as `${NAME}` references (Kubernetes: `secretKeyRef`s).

When every job runs on Kubernetes, `--format yaml` prints the Job manifests alone, one YAML document
per job, ready for `kubectl apply --dry-run=server -f -` or a schema checker; the plan document (with
each Job under `manifest`) stays one `--format json` away. A pipeline with other runners gets the plan
document in YAML, as always. The Kubernetes manifests are built here from the settings (through
kubernetes_manifest, as the runner builds them): no cluster is contacted.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import yaml

from jobgraph.cli.commands import PlanFormat
from jobgraph.cli.common import home, reported, write_plain
from jobgraph.config import Job, Pipeline, load
from jobgraph.config.params import given_values, parse_assignments
from jobgraph.engine.run import GraphRun
from jobgraph.errors import ConfigError, Problem
from jobgraph.runners import AnyRunner, JobSpec, make_runner
from jobgraph.runners import kubernetes_manifest as kubernetes
from jobgraph.runners.registry import settings_for
from jobgraph.schedule import parse_schedule
from jobgraph.template import TemplateError

PLAN_RUN_ID = "<run id>"
"""What stands for the run id, which exists only once a run starts."""

PLAN_OWNER = "<owner>"
"""What stands for the jobgraph process that will own the run's Kubernetes Jobs."""

FIRES_SHOWN = 5


@reported
def plan(file: Path, runner: str | None = None, output: PlanFormat = PlanFormat.yaml,
         params: list[str] | None = None) -> None:
    """Print the plan: the next fire times, then each job's first attempt as its runner would submit it, its
    placeholders filled with the `--param` values, else the defaults (a param with neither shows `<param NAME>`)."""
    pipeline = load(file, runner)
    given = given_values(pipeline, parse_assignments(params or []), str(file), from_text=True)
    values = {param.name: given.get(param.name, param.default if param.default is not None else
                                    f"<param {param.name}>") for param in pipeline.params}
    if output == PlanFormat.yaml and all((runner or job.runner) == "kubernetes" for job in pipeline.all_jobs()):
        write_plain(_manifest_stream(pipeline, values, str(file)))
        return
    jobs = _jobs(pipeline, runner, values, str(file))
    document = {"pipeline": pipeline.name, "schedule": _fires(pipeline), "jobs": jobs}
    if output == PlanFormat.json:
        write_plain(json.dumps(document, indent=2))
    else:
        write_plain(yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000).rstrip())


def _specs(pipeline: Pipeline, params: dict[str, object], file: str) -> list[JobSpec]:
    """Each job's first attempt, in the order the DAG runs them; secrets as placeholders, never read."""
    placeholders = {name: f"<secret {name}>" for job in pipeline.all_jobs() for name in job.secrets}
    draft = GraphRun.draft(pipeline, home() / "logs", PLAN_RUN_ID, secrets=placeholders, params=params)
    return [_first_attempt(draft, job, file) for job in pipeline.all_jobs()]


def _first_attempt(draft: GraphRun, job: Job, file: str) -> JobSpec:
    """The job's first attempt; a placeholder with no value there (`{{ item.path }}` over an item that is a
    string) is the error a run would record as that attempt's ERROR, said here naming the file and job."""
    try:
        return draft.spec_for(job, 1)
    except TemplateError as exc:
        field = "for_each" if job.for_each is not None else None
        raise ConfigError(file, [Problem(f"its first attempt cannot be filled in: {exc} (a run records that "
                                         "attempt as ERROR)", job=job.name, field=field)]) from None


def _jobs(pipeline: Pipeline, runner_override: str | None, params: dict[str, object],
          file: str) -> list[dict[str, Any]]:
    """Each job's first attempt as its runner would submit it, in the order the DAG runs them."""
    runners: dict[str, AnyRunner] = {}
    planned = []
    for job, spec in zip(pipeline.all_jobs(), _specs(pipeline, params, file), strict=True):
        name = runner_override or job.runner or "local"
        if name == "kubernetes":
            described = kubernetes.describe(spec, _kubernetes_settings(pipeline), PLAN_OWNER)
        else:
            if name not in runners:
                runners[name] = make_runner(name, pipeline, home(), cwd=Path.cwd())
            described = runners[name].describe(spec)
        planned.append({"job": job.name, "after": list(job.after), "pool": job.pool or "default",
                        "retries": job.retries, "timeout_secs": job.timeout, **described})
    return planned


def _kubernetes_settings(pipeline: Pipeline) -> kubernetes.KubernetesSettings:
    settings = settings_for("kubernetes", pipeline)
    assert isinstance(settings, kubernetes.KubernetesSettings)
    return kubernetes.with_pipeline_images(settings, pipeline.container_images)


def _manifest_stream(pipeline: Pipeline, params: dict[str, object], file: str) -> str:
    """Every job's first-attempt Job as one multi-document YAML stream, a comment saying what it is first."""
    settings = _kubernetes_settings(pipeline)
    manifests = [kubernetes.job_manifest(spec, settings, PLAN_OWNER) for spec in _specs(pipeline, params, file)]
    fires = _fires(pipeline)
    header = [f"# jobgraph plan: pipeline {pipeline.name}, the first attempt of each of its {len(manifests)} jobs "
              f"as a Kubernetes Job ({PLAN_RUN_ID} and {PLAN_OWNER} stand for what a run fills in)"]
    if fires is not None:
        header.append(f"# schedule {fires['text']!r}: next {', '.join(fires['next'][:3])}")
    body = yaml.dump_all(manifests, Dumper=_Stream, sort_keys=False, allow_unicode=True, width=1000,
                         explicit_start=True)
    return "\n".join(header) + "\n" + body.rstrip()


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


if TYPE_CHECKING:
    _SafeDumper = yaml.SafeDumper
else:  # libyaml's emitter when PyYAML has it: the same text, 2-3 times faster (10,000 Jobs: 25 s -> 7 s)
    _SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_SafeDumper):
    """Multi-line text (a batch script) as a YAML block, so it reads as the file it is."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


class _Stream(_Dumper):
    """Manifests for kubectl: each written out in full, never as a YAML alias of another part."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
