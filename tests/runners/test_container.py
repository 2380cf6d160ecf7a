"""The container runner against a real Podman engine: outcomes, logs, limits, cancel, orphans, the seed."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from jobgraph.config import Pipeline
from jobgraph.config.validate import check_pipeline
from jobgraph.engine import AttemptEnded, AttemptStarted, Event, RunEnded, TaskChanged
from jobgraph.engine.run import GraphRun, RunResult
from jobgraph.runners.container import ContainerRunner
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from tests.conftest import Cli, store_url
from tests.runners.conftest import TEST_IMAGE, seed_folder

pytestmark = pytest.mark.usefixtures("no_leftovers")


def box(name: str, script: str, **fields: Any) -> dict[str, Any]:
    """A job running a shell script in the busybox test image."""
    return {"name": name, "image": TEST_IMAGE, "args": ["sh", "-c", script], **fields}


def execute(tmp_path: Path, jobs: list[dict[str, Any]], secrets: dict[str, str] | None = None,
            cancel_after: float | None = None, listener: Any = None,
            **fields: Any) -> tuple[RunResult, list[Event]]:
    document = {"name": "boxes", "defaults": {"runner": "podman", "network": "none"}, "jobs": jobs, **fields}
    pipeline = check_pipeline(Pipeline.model_validate(document), "test")
    events: list[Event] = []
    runner = ContainerRunner("podman", tmp_path / ".jobgraph", cwd=tmp_path)
    listeners = [events.append, *([listener] if listener else [])]
    graph_run = GraphRun(pipeline, lambda _job: runner, listeners, tmp_path / "logs", secrets=secrets)

    async def main() -> RunResult:
        task = asyncio.create_task(graph_run.run())
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            graph_run.cancel()
        try:
            return await task
        finally:
            await runner.aclose()

    return asyncio.run(main()), events


def attempts(events: list[Event], task: str) -> list[AttemptEnded]:
    return [e for e in events if isinstance(e, AttemptEnded) and e.task == task]


def test_success_with_env_labels_volume_workdir_and_return_value(
        tmp_path: Path, engine: docker.DockerClient) -> None:
    (tmp_path / "shared").mkdir()
    script = ('echo "$JOBGRAPH_TASK $JOBGRAPH_ATTEMPT $GREETING $(pwd)" > /w/out; '
              'printf "42 rows" > "$JOBGRAPH_RETURN_VALUE_FILE"; echo to-stdout; echo to-stderr >&2; sleep 2')
    seen: dict[str, str] = {}

    def look(run_id: str) -> None:  # until the container runs (it may take seconds to create under load)
        found = engine.containers.list(filters={"label": ["jobgraph.task=hello", f"jobgraph.run_id={run_id}"]})
        if found:
            seen.update(found[0].labels)
        else:
            asyncio.get_running_loop().call_later(0.2, look, run_id)

    def labels(event: Event) -> None:
        if isinstance(event, TaskChanged) and event.task == "hello" and event.state == "RUNNING":
            asyncio.get_running_loop().call_soon(look, event.run_id)

    jobs = [box("hello", script, env={"GREETING": "hi"}, volumes={"shared": "/w"}, workdir="/w"),
            box("next", 'echo "$JOBGRAPH_PREDECESSOR_VALUES" > /w/values', after=["hello"],
                volumes={"shared": "/w"})]
    result, events = execute(tmp_path, jobs, listener=labels)
    assert result.state == RunState.SUCCEEDED
    assert (tmp_path / "shared" / "out").read_text() == "hello 1 hi /w\n"
    assert (tmp_path / "shared" / "values").read_text() == '{"hello": "42 rows"}\n'
    done = next(e for e in events if isinstance(e, TaskChanged) and e.task == "hello" and e.state == "SUCCEEDED")
    assert done.return_value == "42 rows"
    log = attempts(events, "hello")[0].log_path.read_text()
    assert "to-stdout" in log and "to-stderr" in log
    assert seen["jobgraph.task"] == "hello" and seen["jobgraph.attempt"] == "1"
    assert seen["jobgraph.pipeline"] == "boxes" and seen["jobgraph.run_id"] == result.run_id
    assert seen["jobgraph.owner"].split(":")[1] == str(os.getpid())


def test_failure_keeps_exit_code_and_log_tail_then_retries(tmp_path: Path) -> None:
    result, events = execute(tmp_path, [box("bad", "echo something broke >&2; exit 3", retries=1)])
    ended = attempts(events, "bad")
    assert [(e.attempt, e.status, e.exit_code) for e in ended] == [(1, "FAILED", 3), (2, "FAILED", 3)]
    assert ended[0].error is not None and "exit code 3" in ended[0].error and "something broke" in ended[0].error
    assert result.tasks["bad"] == TaskState.FAILED


def test_timeout_kills_and_removes_the_container(tmp_path: Path) -> None:
    started = time.monotonic()
    result, events = execute(tmp_path, [box("slow", "sleep 60", timeout=1)])
    assert time.monotonic() - started < 30
    ended = attempts(events, "slow")[0]
    assert ended.status == AttemptStatus.TIMEOUT and result.tasks["slow"] == TaskState.FAILED


def test_memory_limit_kill_is_reported_as_oom(tmp_path: Path) -> None:
    jobs = [{"name": "hungry", "image": TEST_IMAGE, "pool": "tiny",
             "args": ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]}]
    _, events = execute(tmp_path, jobs, pools={"tiny": {"max_parallel": 1, "memory": "16m"}})
    ended = attempts(events, "hungry")[0]
    assert ended.status == AttemptStatus.FAILED and ended.exit_code == 137
    assert ended.error is not None
    assert ended.error.startswith(("OOMKilled: out of memory (memory limit 16 MiB)",
                                   "killed (exit code 137) under a memory limit 16 MiB: out of memory"))


def test_missing_image_is_an_error_attempt(tmp_path: Path) -> None:
    result, events = execute(tmp_path, [{"name": "ghost", "image": "localhost/no-such-image:1", "retries": 1}])
    ended = attempts(events, "ghost")
    assert [e.status for e in ended] == [AttemptStatus.ERROR, AttemptStatus.ERROR]
    assert ended[0].error is not None and "image 'localhost/no-such-image:1' not found" in ended[0].error
    assert result.tasks["ghost"] == TaskState.FAILED


def test_cancel_stops_and_removes_every_container(tmp_path: Path, engine: docker.DockerClient) -> None:
    jobs = [box("one", "sleep 60"), box("two", "sleep 60"), box("after", "true", after=["one"])]
    left: list[str] = []

    def before_close(event: Event) -> None:
        if isinstance(event, RunEnded):  # the runner has not swept anything yet
            left.extend(c.name for c in engine.containers.list(
                all=True, filters={"label": f"jobgraph.run_id={event.run_id}"}))

    result, events = execute(tmp_path, jobs, cancel_after=2.0, listener=before_close)
    assert left == []
    started = [(e.task, e.attempt) for e in events if isinstance(e, AttemptStarted)]
    assert sorted(started) == sorted((e.task, e.attempt) for e in events if isinstance(e, AttemptEnded))
    assert result.state == RunState.CANCELLED
    assert result.tasks == {"one": "CANCELLED", "two": "CANCELLED", "after": "CANCELLED"}
    assert {e.status for e in events if isinstance(e, AttemptEnded)} == {AttemptStatus.CANCELLED}


def test_secrets_reach_the_job_but_not_the_logs_or_the_store(tmp_path: Path) -> None:
    result, events = execute(tmp_path, [box("uses_secret", 'echo "token is $API_TOKEN"; exit 1',
                                            secrets=["API_TOKEN"])], secrets={"API_TOKEN": "s3cr3t-value"})
    ended = attempts(events, "uses_secret")[0]
    assert ended.error is not None and "token is ***" in ended.error and "s3cr3t" not in ended.error
    assert "token is ***" in ended.log_path.read_text()
    changed = [e for e in events if isinstance(e, TaskChanged) and e.reason]
    assert all("s3cr3t" not in (e.reason or "") for e in changed)
    assert result.tasks["uses_secret"] == TaskState.FAILED


def test_the_seed_demo_runs_in_containers_with_the_failure_story(tmp_path: Path, cli: Cli) -> None:
    folder = seed_folder(tmp_path)
    run = cli("run", "pipeline-containers.yaml", check=0)
    assert "t_myjob_6 SUCCEEDED" in run.stdout
    with sqlite3.connect(folder / "results.db") as db:
        for i in range(1, 7):
            assert db.execute(f"select \"'hello'\" from results_{i}").fetchall() == [("hello",)]
        db.execute("""ALTER TABLE results_3 DROP COLUMN "'hello'" """)
        db.execute("ALTER TABLE results_3 ADD COLUMN createdate DATETIME")
    cli("run", "pipeline-containers.yaml", check=1)
    store = Store(store_url(tmp_path))
    failed_run = store.runs(1)[0]
    tries = [a for a in store.attempts(failed_run.run_id) if a.task == "t_myjob_3"]
    assert [a.status for a in tries] == ["FAILED"] * 3
    assert "table results_3 has no column named 'hello'" in (tries[-1].error or "")
    states = {t.task: t.state for t in store.tasks(failed_run.run_id)}
    assert states["t_myjob_6"] == "SKIPPED" and states["t_myjob_5"] == "SUCCEEDED"
    _, rows = store.view("jobs_run_stats", limit=20)
    assert [r[2] for r in rows if r[1] == "t_myjob_3" and r[3] == failed_run.run_id] == ["FAILED"]
    _, rows = store.view("job_attempts", limit=20)
    assert [r[3] for r in rows if r[1] == "t_myjob_3" and r[0] == failed_run.run_id] == ["FAILED"] * 3


def test_kill_9_leaves_containers_that_the_next_run_removes(
        tmp_path: Path, engine: docker.DockerClient, write_pipeline: Any) -> None:
    path = write_pipeline({"name": "k", "defaults": {"runner": "podman", "network": "none"},
                           "jobs": [box("stuck", "sleep 300")]}, with_sh=False)
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not engine.containers.list(filters={"label": "jobgraph.task=stuck"}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine.containers.list(filters={"label": "jobgraph.task=stuck"}), "the container never started"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(engine.containers.list(all=True, filters={"label": "jobgraph.task=stuck"})) == 1

    quick = write_pipeline({"name": "q", "images": {"sh": ["sh", "-c"]}, "jobs": [{"name": "quick", "image": "sh",
                            "args": ["true"]}]}, name="quick.yaml", with_sh=False)
    after = subprocess.run([sys.executable, "-m", "jobgraph", "run", str(quick)], cwd=tmp_path, env=env, check=True,
                           capture_output=True, text=True)
    assert "its jobgraph process died; killed" in after.stderr and "and 1 container(s)" in after.stderr
    assert engine.containers.list(all=True, filters={"label": "jobgraph.task=stuck"}) == []


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.6])
def test_cancel_while_containers_are_being_created_leaves_nothing(
        tmp_path: Path, engine: docker.DockerClient, delay: float) -> None:
    """Whenever the cancel lands (connecting, creating, starting), no container survives the run."""
    left: list[str] = []

    def before_close(event: Event) -> None:
        if isinstance(event, RunEnded):
            left.extend(c.name for c in engine.containers.list(
                all=True, filters={"label": f"jobgraph.run_id={event.run_id}"}))

    result, events = execute(tmp_path, [box(f"j{i}", "sleep 30") for i in range(4)], cancel_after=delay,
                             listener=before_close)
    assert result.state == RunState.CANCELLED and left == []
    assert set(result.tasks.values()) == {TaskState.CANCELLED}
    started = {(e.task, e.attempt) for e in events if isinstance(e, AttemptStarted)}
    assert started == {(e.task, e.attempt) for e in events if isinstance(e, AttemptEnded)}


PEM = ("-----BEGIN PRIVATE KEY-----\n"
       "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKB\n"
       "UnlGmPaGdRlpRwqZr2LWnUVPqGkTRB9yCvzqxUwqjQIDAQABAoIBAQCRbLPjsYLo\n"
       "AB==\n"
       "-----END PRIVATE KEY-----")


def test_a_container_job_sees_only_its_out_folder_and_cannot_reach_host_files_by_links(tmp_path: Path) -> None:
    """Links planted at every name jobgraph used or uses touch no host file and read none into the store."""
    host = tmp_path / "host-file"
    host.write_text("HOST FILE, not the job's\n")
    plant = " ".join(f"ln -sf {host} /jobgraph/out/{name};" for name in
                     ("attempt-1.log", "attempt-1.return", "return", "../attempt-1.log", ".return.scrubbed"))
    steals = f'echo "out holds [$(ls -A /jobgraph/out)]"; ln -s {host} "$JOBGRAPH_RETURN_VALUE_FILE"; {plant} echo end'
    relinks = f"{plant} echo printed; exit 1"
    result, events = execute(tmp_path, [box("steals", steals), box("relinks", relinks, secrets=["API_TOKEN"])],
                             secrets={"API_TOKEN": "HOST"})
    assert host.read_text() == "HOST FILE, not the job's\n"
    done = next(e for e in events if isinstance(e, TaskChanged) and e.task == "steals" and e.state == "SUCCEEDED")
    assert done.return_value is None
    log = attempts(events, "steals")[0].log_path
    assert not log.is_symlink() and log.read_text() == "out holds []\nend\n"
    failed = attempts(events, "relinks")[0]
    assert failed.error is not None and "printed" in failed.error and "FILE" not in failed.error
    assert result.tasks == {"steals": TaskState.SUCCEEDED, "relinks": TaskState.FAILED}


def test_a_fifo_return_file_in_a_container_freezes_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    result, events = execute(tmp_path, [box("plants", 'mkfifo "$JOBGRAPH_RETURN_VALUE_FILE"'),
                                        box("slow", "sleep 60", timeout=3)])
    assert time.monotonic() - started < 45
    assert result.tasks == {"plants": TaskState.SUCCEEDED, "slow": TaskState.FAILED}
    assert attempts(events, "slow")[0].status == AttemptStatus.TIMEOUT


def test_a_multi_line_secret_leaks_from_no_container_log_error_or_return_file(tmp_path: Path) -> None:
    script = ('echo "token $API_TOKEN"; printf "split %s" "${API_TOKEN%???????}"; sleep 7; '
              'printf "%s\\n" "${API_TOKEN#?????}"; '
              'echo "$PRIVATE_KEY" | while read -r line; do echo "got: $line"; done; '
              'printf "%s" "$PRIVATE_KEY" > "$JOBGRAPH_RETURN_VALUE_FILE"; exit 1')
    secrets = {"API_TOKEN": "s3cr3t-value", "PRIVATE_KEY": PEM}
    seen_running: list[str] = []

    def peek(event: Event) -> None:  # the log as `jobgraph logs` shows it while the job sleeps
        if isinstance(event, AttemptStarted):
            asyncio.get_running_loop().call_later(6.5, lambda: seen_running.append(event.log_path.read_text()))

    _, events = execute(tmp_path, [box("leaky", script, secrets=list(secrets))], secrets=secrets, listener=peek)
    ended = attempts(events, "leaky")[0]
    texts = [*seen_running, ended.error or "", ended.log_path.read_text(),
             (ended.log_path.parent / "attempt-1.return").read_text(),
             *((e.reason or "") for e in events if isinstance(e, TaskChanged))]
    pieces = ["s3cr3", "t-value"] + [line for line in PEM.splitlines() if len(line) >= 4]
    for text in texts:
        assert not [piece for piece in pieces if piece in text], text
    assert seen_running and "token ***" in seen_running[0]
    assert "split ***" in texts[2] and "got: ***" in texts[2] and texts[3] == "***"


def test_container_output_is_streamed_and_capped_and_the_job_runs_on(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    noisy = ("head -c 3000000 /dev/zero | tr '\\000' x; echo; echo done > /w/marker; "
             'printf ok > "$JOBGRAPH_RETURN_VALUE_FILE"')
    result, events = execute(tmp_path, [box("noisy", noisy, volumes={"shared": "/w"}, log_limit="1m"),
                                        box("one_line", "head -c 3000000 /dev/zero | tr '\\000' y", log_limit="10m")])
    assert result.state == RunState.SUCCEEDED
    assert (tmp_path / "shared" / "marker").read_text() == "done\n"
    done = next(e for e in events if isinstance(e, TaskChanged) and e.task == "noisy" and e.state == "SUCCEEDED")
    assert done.return_value == "ok"
    capped = attempts(events, "noisy")[0].log_path.read_bytes()
    assert capped.count(b"x") == 1 << 20
    assert capped.endswith(b"(log_limit); the rest of the job's output is not stored]\n")
    assert attempts(events, "one_line")[0].log_path.read_bytes() == b"y" * 3_000_000
