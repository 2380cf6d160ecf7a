"""How a local job's process starts (posix_spawn, or Popen for another working folder): what it gets, what not.

Each job must start exactly as Popen started it: its own session, stdin from /dev/null, stdout and
stderr on the pipe jobgraph drains, SIGPIPE at its default, no descriptor of jobgraph's but 0, 1, 2,
jobgraph's environment without other jobs' secrets, and the runner's marker.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from jobgraph.runners import JobSpec, LocalRunner
from jobgraph.store import Store
from tests.conftest import WritePipeline, sh, store_url

PROBE = (
    'set -- $(cut -d" " -f6 /proc/$$/stat); echo "session-leader=$([ "$1" = $$ ] && echo yes || echo no)"; '
    'echo "stdin=$(readlink /proc/$$/fd/0)"; '
    'echo "stdout=$(readlink /proc/$$/fd/1 | cut -d: -f1) stderr=$(readlink /proc/$$/fd/2 | cut -d: -f1)"; '
    'echo "sigpipe-ignored=$(( (0x$(grep SigIgn /proc/$$/status | cut -f2) >> 12) & 1 ))"; '
    'echo "inherited-fd=$([ -e /proc/$$/fd/$INHERITED_FD ] && echo open || echo closed)"; '
    'echo "marker=$JOBGRAPH_RUNNER own=${OWN_SECRET:-unset} other=${OTHER_SECRET:-unset}"'
)
"""A job that describes how it was started, one `key=value` per line, from /proc (no tool of its own)."""

EXPECTED = {"session-leader=yes", "stdin=/dev/null", "stdout=pipe stderr=pipe", "sigpipe-ignored=0",
            "inherited-fd=closed", "marker=local own=*** other=unset"}


def run_jobgraph(tmp_path: Path, *args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    """The real `jobgraph` in tmp_path, as the `cli` fixture runs it, with descriptors it inherits."""
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "OWN_SECRET": "mine-123",
           "OTHER_SECRET": "theirs-456", "INHERITED_FD": str(pass_fds[0] if pass_fds else 99)}
    env.pop("JOBGRAPH_STORE", None)
    return subprocess.run([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=env, pass_fds=pass_fds,
                          capture_output=True, text=True, timeout=120)


def log_lines(tmp_path: Path, job: str) -> set[str]:
    store = Store(store_url(tmp_path))
    [attempt] = store.attempts(store.runs(1)[0].run_id, job)
    return set(attempt.log_path.read_text().splitlines())


def test_a_job_starts_as_popen_started_it_and_inherits_no_descriptor_of_jobgraph(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    read_end, write_end = os.pipe()  # inheritable in jobgraph: its jobs must not get it
    try:
        path = write_pipeline({"jobs": [sh("probe", PROBE, secrets=["OWN_SECRET"]),
                                        sh("other", "echo $OTHER_SECRET", secrets=["OTHER_SECRET"])]})
        result = run_jobgraph(tmp_path, "run", str(path), pass_fds=(write_end,))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == 0, result.stdout + result.stderr
    assert log_lines(tmp_path, "probe") == EXPECTED
    assert log_lines(tmp_path, "other") == {"***"}


def test_a_job_in_another_working_folder_starts_the_same_way(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()

    async def probe() -> None:
        runner = LocalRunner({"sh": ["sh", "-c"]}, cwd=folder)
        env = {"JOBGRAPH_RUN_ID": "run-cwd", "JOBGRAPH_TASK": "probe", "JOBGRAPH_ATTEMPT": "1",
               "OWN_SECRET": "mine-123"}
        spec = JobSpec("run-cwd", "p", "probe", 1, "sh", (PROBE + "; pwd",), env, tmp_path / "probe.log",
                       secret_values=frozenset({"mine-123"}), withheld_env=frozenset({"OTHER_SECRET"}))
        outcome = await runner.wait(await runner.start(spec))
        await runner.aclose()
        assert outcome.exit_code == 0

    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    os.environ.update(OTHER_SECRET="theirs-456", INHERITED_FD=str(write_end))
    try:
        asyncio.run(probe())
    finally:
        del os.environ["OTHER_SECRET"], os.environ["INHERITED_FD"]
        os.close(read_end)
        os.close(write_end)
    assert set((tmp_path / "probe.log").read_text().splitlines()) == EXPECTED | {str(folder)}


def test_a_program_missing_or_not_executable_on_the_jobs_path_fails_its_attempt_with_why(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "not-executable").write_text("#!/bin/sh\necho no\n")
    (tools / "greet").write_text("#!/bin/sh\necho \"hello $1\"\n")
    (tools / "greet").chmod(0o755)
    search = f"{tools}{os.pathsep}{os.environ['PATH']}"
    path = write_pipeline({"name": "p", "images": {"missing": ["no-such-program-jg"], "denied": ["not-executable"],
                                      "greet": ["greet"]},
                           "jobs": [{"name": "missing", "image": "missing", "env": {"PATH": search}},
                                    {"name": "denied", "image": "denied", "env": {"PATH": search}},
                                    {"name": "greets", "image": "greet", "args": ["you"], "env": {"PATH": search}}]},
                          with_sh=False)
    result = run_jobgraph(tmp_path, "run", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    store = Store(store_url(tmp_path))
    run_id = store.runs(1)[0].run_id
    errors = {job: store.attempts(run_id, job)[0] for job in ("missing", "denied", "greets")}
    assert (errors["missing"].status, errors["missing"].error) == (
        "ERROR", "cannot start 'no-such-program-jg': No such file or directory")
    assert (errors["denied"].status, errors["denied"].error) == (
        "ERROR", "cannot start 'not-executable': Permission denied")
    assert errors["greets"].status == "DONE"
    assert log_lines(tmp_path, "greets") == {"hello you"}
