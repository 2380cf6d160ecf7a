"""A real Podman engine for the container tests: started once per session, stopped at the end.

On CI (CI=true) a missing engine or image fails the suite with the reason; elsewhere those tests skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from jobgraph.runners.service import start_podman_service

TEST_IMAGE = "localhost/jobgraph-test:latest"
SQL_IMAGE = "localhost/jobgraph-sql-job:latest"


def _unavailable(reason: str) -> None:
    message = f"{reason}; run `bash scripts/setup-podman.sh && bash scripts/build-images.sh`"
    if os.environ.get("CI") == "true":
        pytest.fail(f"container tests cannot run on CI: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[docker.DockerClient]:
    """A Docker Engine API client on a Podman service of our own; DOCKER_HOST points every runner at it."""
    if shutil.which("podman") is None:
        _unavailable("podman is not installed")
    service = start_podman_service(tmp_path_factory.mktemp("podman") / "podman.sock")
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = service.base_url
    client = docker.DockerClient(base_url=service.base_url, timeout=60)
    try:
        for image in (TEST_IMAGE, SQL_IMAGE):
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                _unavailable(f"image {image} is missing")
        yield client
    finally:
        client.close()
        service.stop()
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous


@pytest.fixture
def no_leftovers(engine: docker.DockerClient, tmp_path: Path) -> Iterator[docker.DockerClient]:
    """Fail the test if a jobgraph container it made is left behind, by the engine's own list.

    A container is this test's when it mounts a folder under the test's tmp_path (every jobgraph
    container mounts its attempt's out folder, under the run's logs): other jobgraphs on this
    machine, other test sessions included, share the engine's storage, and their containers are
    neither counted nor touched.
    """
    yield engine
    # sparse: the list as the engine gives it, not inspected again one by one (another session's
    # container removed in between would fail the inspect)
    left = [c for c in engine.containers.list(all=True, filters={"label": "jobgraph.run_id"}, sparse=True)
            if any(str(m.get("Source", "")).startswith(f"{tmp_path}/") for m in c.attrs.get("Mounts") or [])]
    for container in left:
        container.remove(force=True)
    assert [c.attrs.get("Names") for c in left] == []


def seed_folder(tmp_path: Path) -> Path:
    """The seed's files in tmp_path, as the container demo uses them."""
    repo = Path(__file__).resolve().parents[2] / "examples" / "seed"
    for name in ("jobconfig.json", "pipeline-containers.yaml"):
        shutil.copy(repo / name, tmp_path / name)
    return tmp_path
