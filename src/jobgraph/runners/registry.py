"""The one table that maps a runner name to its backend: adding a runner touches its own module and this table.

Nothing here imports a backend until it is asked for, so the config can check runner names (and
each runner's settings) without loading Docker's SDK or anything else a pipeline does not use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from jobgraph.errors import RunnerError

if TYPE_CHECKING:
    from jobgraph.config.model import Pipeline
    from jobgraph.runners.base import AnyRunner


@dataclass(frozen=True)
class Backend:
    """Where a runner lives and what it needs.

    `build` is `module:function` taking (name, pipeline, settings, folder, cwd); `settings` is
    `module:Model` for its `runners: {name: {...}}` section, or None for a runner that takes none;
    `host_commands` says the runner runs an image as the host command that `images` maps it to;
    `remote` says its attempts outlive jobgraph (their handles are recorded, and adopted after a crash);
    `clean_up` is `module:function` taking (name, run_id, folder) that removes what a run whose
    jobgraph died left in this backend (processes, containers) and says how many, or None.
    """

    build: str
    settings: str | None = None
    host_commands: bool = False
    remote: bool = False
    clean_up: str | None = None


BACKENDS: dict[str, Backend] = {
    "local": Backend("jobgraph.runners.local:build", host_commands=True,
                     clean_up="jobgraph.runners.local:clean_up_lost_run"),
    "podman": Backend("jobgraph.runners.container:build", clean_up="jobgraph.runners.container:clean_up_lost_run"),
    "docker": Backend("jobgraph.runners.container:build", clean_up="jobgraph.runners.container:clean_up_lost_run"),
    "slurm": Backend("jobgraph.runners.slurm:build", "jobgraph.runners.slurm_batch:SlurmSettings",
                     host_commands=True, remote=True),
    "kubernetes": Backend("jobgraph.runners.kubernetes:build",
                          "jobgraph.runners.kubernetes_manifest:KubernetesSettings", remote=True),
    "spcs": Backend("jobgraph.runners.spcs:build", "jobgraph.runners.spcs_spec:SpcsSettings", remote=True),
}

RUNNER_NAMES: tuple[str, ...] = tuple(BACKENDS)


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def backend(name: str) -> Backend:
    """A runner's table entry, or a RunnerError naming the runners there are."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise RunnerError(f"unknown runner {name!r}; the runners are {', '.join(RUNNER_NAMES)}") from None


def settings_model(name: str) -> type[BaseModel] | None:
    """The model of a runner's settings section (imports that runner's settings module only)."""
    reference = backend(name).settings
    return None if reference is None else _load(reference)


def settings_for(name: str, pipeline: Pipeline) -> BaseModel | None:
    """A runner's settings from the pipeline's `runners` section, with their defaults."""
    model = settings_model(name)
    return None if model is None else model.model_validate(pipeline.runners.get(name, {}))


def clean_up_lost_run(name: str, run_id: str, folder: Path) -> int:
    """Have a backend remove what a run whose jobgraph died left there; how many things it removed."""
    reference = backend(name).clean_up
    return 0 if reference is None else int(_load(reference)(name, run_id, folder))


def make_runner(name: str, pipeline: Pipeline, folder: Path, cwd: Path | None = None) -> AnyRunner:
    """The runner called `name`, set up for this pipeline; `folder` is jobgraph's own (sockets, state)."""
    try:
        build = _load(backend(name).build)
    except ModuleNotFoundError as exc:  # an optional extra not installed (lightkube for kubernetes)
        raise RunnerError(f"the {name} runner cannot be loaded: {exc}; install it with "
                          f"pip install 'jobgraph[{name}]'") from None
    return build(name, pipeline, settings_for(name, pipeline), folder, cwd)  # type: ignore[no-any-return]
