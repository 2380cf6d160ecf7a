"""A job's own `command:` is the host command both host runners run (local, slurm), its args after it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec
from jobgraph.runners.local import LocalRunner
from jobgraph.runners.slurm_batch import host_command


def spec(image: str, command: tuple[str, ...] | None) -> JobSpec:
    return JobSpec("r", "p", "a", 1, image, ("--x", "{{ not rendered here }}"), {}, Path("/tmp/log"),
                   command=command)


def test_a_command_is_run_instead_of_an_images_entry() -> None:
    images = {"img": ("sh", "-c")}
    for build in (LocalRunner(images).command, lambda s: host_command(images, s)):
        assert build(spec("(command)", ("python", "-m", "m"))) == [sys.executable, "-m", "m", "--x",
                                                                   "{{ not rendered here }}"]
        assert build(spec("img", None)) == ["sh", "-c", "--x", "{{ not rendered here }}"]
        with pytest.raises(RunnerError, match="image '\\(command\\)' has no command"):
            build(spec("(command)", None))
