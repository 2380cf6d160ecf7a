"""`jobgraph doctor`: what container engine jobgraph would use, its version, and what is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
from rich.table import Table

from jobgraph.cli.common import console, home
from jobgraph.errors import RunnerError
from jobgraph.runners.service import find_or_start

CONTAINERS_CONF = Path("/etc/containers/containers.conf")
IMAGES = ("localhost/jobgraph-test:latest", "localhost/jobgraph-sql-job:latest")


def doctor(engine: str = "podman") -> None:
    """One row per check, with the fix for what is missing; exit 1 if anything is."""
    import docker
    import docker.errors

    table = Table(title="jobgraph doctor", title_justify="left")
    for column in ("check", "status", "detail / fix"):
        table.add_column(column, overflow="fold")
    problems = 0

    def row(check: str, ok: bool, detail: str) -> None:
        nonlocal problems
        problems += 0 if ok else 1
        table.add_row(check, "[green]ok[/green]" if ok else "[red]missing[/red]", detail)

    podman = shutil.which("podman")
    row("podman installed", podman is not None, podman or "bash scripts/setup-podman.sh")
    conf = CONTAINERS_CONF.read_text() if CONTAINERS_CONF.exists() else ""
    row("containers.conf default_ulimits = []", "default_ulimits = []" in conf,
        str(CONTAINERS_CONF) if "default_ulimits = []" in conf else "bash scripts/setup-podman.sh (rlimits "
        "cannot be set on these machines)")
    row("containers.conf runtime = runc", 'runtime = "runc"' in conf,
        "runc" if 'runtime = "runc"' in conf else "bash scripts/setup-podman.sh (crun fails on hybrid cgroups)")
    try:
        service = find_or_start(engine, home())
    except RunnerError as exc:
        row("engine API", False, str(exc))
        console.print(table)
        raise typer.Exit(1) from None
    try:
        client = docker.DockerClient(base_url=service.base_url, timeout=30)
        version = client.version()
        names = [c.get("Name", "") for c in version.get("Components", [])] or ["Docker Engine"]
        started = " (started by jobgraph for this check)" if service.process else ""
        row("engine API", True, f"{service.base_url}{started}: {names[0]} {version.get('Version')}, "
            f"API {version.get('ApiVersion')}")
        for image in IMAGES:
            try:
                client.images.get(image)
                row(f"image {image}", True, "present")
            except docker.errors.ImageNotFound:
                row(f"image {image}", False, "bash scripts/build-images.sh")
        client.close()
    except docker.errors.DockerException as exc:
        row("engine API", False, f"{service.base_url}: {exc}")
    finally:
        service.stop()
    console.print(table)
    raise typer.Exit(0 if problems == 0 else 1)
