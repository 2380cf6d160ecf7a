"""The SPCS runner end to end through the `jobgraph` command, against the local SPCS emulator (Podman).

No Snowflake account can be reached from here: these runs send the runner's real statements to
`spcs_emulator.EmulatorSession`, which runs each job service's container through Podman. They show the
runner's whole story as a user meets it (the seed's jobconfig.json, a failure with its logs, retries,
cancel, adopt after kill -9, a pool that does not exist), not Snowflake's own behaviour.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from jobgraph.runners import spcs_statements as sql
from jobgraph.runners.spcs_emulator import LABEL, POOLS_VARIABLE, EmulatorSession
from jobgraph.runners.spcs_spec import SpcsSettings
from jobgraph.store import Store
from tests.conftest import SEED, Cli, WritePipeline, store_url
from tests.runners.conftest import SQL_IMAGE, TEST_IMAGE, engine  # noqa: F401 (the Podman tests' fixture)

SEED_IMAGE = "/tutorial_db/data_schema/tutorial_repository/my_job_image:latest"
BOX_IMAGE = "/tutorial_db/data_schema/tutorial_repository/box:latest"
EMULATED = {"runner": "spcs", "retry_delay": "0.2s"}
SETTINGS = {"spcs": {"emulator": True, "poll_secs": 0.2, "database": "tutorial_db", "schema": "data_schema"}}
POOLS = {"PR_STD_POOL_XS": {"max_parallel": 1, "instance_family": "CPU_X64_XS"},
         "PR_STD_POOL_S": {"max_parallel": 2, "instance_family": "CPU_X64_S"}}


def emulated(name: str, jobs: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A pipeline on the emulated SPCS runner, its images mapped to local ones."""
    return {"name": name, "pools": POOLS, "defaults": EMULATED, "runners": SETTINGS,
            "container_images": {SEED_IMAGE: SQL_IMAGE, BOX_IMAGE: TEST_IMAGE}, "jobs": jobs, **fields}


def box(name: str, script: str, **fields: Any) -> dict[str, Any]:
    """A job service running a shell script in the busybox test image."""
    return {"name": name, "image": BOX_IMAGE, "args": ["sh", "-c", script], "pool": "PR_STD_POOL_XS", **fields}


def services(client: docker.DockerClient, names: list[str]) -> list[str]:
    """Which of these services still have a container in Podman."""
    listed = client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, sparse=True)
    return sorted(n for c in listed if (n := c.attrs["Labels"].get(f"{LABEL}.name")) in names)


def remove(client: docker.DockerClient, names: list[str]) -> None:
    """Remove these services' containers (what `DROP SERVICE` would do)."""
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, sparse=True):
        if container.attrs["Labels"].get(f"{LABEL}.name") in names:
            container.remove(force=True)


def running(client: docker.DockerClient, name: str) -> bool:
    return bool(client.containers.list(filters={"label": f"{LABEL}.name={name}", "status": "running"}))


def printed(client: docker.DockerClient, name: str, text: str) -> bool:
    """Whether the service's container is running and has printed `text` (Podman's log of it)."""
    found = client.containers.list(filters={"label": f"{LABEL}.name={name}", "status": "running"})
    return bool(found) and text.encode() in found[0].logs()


@pytest.fixture
def podman(engine: docker.DockerClient, tmp_path: Path) -> Iterator[docker.DockerClient]:  # noqa: F811
    """Podman, and after the test: no container of any service this test's runs started is left."""
    yield engine
    url = store_url(tmp_path)
    if not (tmp_path / ".jobgraph" / "jobgraph.db").exists():
        return
    with Store(url) as records:
        refs = [a.backend_ref for run in records.runs(100) for a in records.attempts(run.run_id) if a.backend_ref]
    left = services(engine, refs)
    remove(engine, left)
    assert left == []


def start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """The real `jobgraph ARGS` in the background, with the `cli` fixture's home."""
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    return subprocess.Popen([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition: Callable[[], object], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def submitted(tmp_path: Path, task: str) -> tuple[str, str]:
    """(run id, service name) once the store holds the attempt's service name."""
    found: list[tuple[str, str]] = []

    def look() -> bool:
        if (tmp_path / ".jobgraph" / "jobgraph.db").exists():
            with Store(store_url(tmp_path)) as records:
                found.extend((run.run_id, a.backend_ref) for run in records.runs(10)
                             for a in records.attempts(run.run_id, task) if a.backend_ref)
        return bool(found)

    wait_until(look)
    return found[0]


def test_the_seeds_jobconfig_runs_on_the_emulated_spcs_to_success(
        tmp_path: Path, cli: Cli, podman: docker.DockerClient) -> None:
    for name in ("jobconfig.json", "pipeline-spcs-emulator.yaml"):  # the example as shipped, polled faster
        shutil.copy(SEED / name, tmp_path / name)
    example = tmp_path / "pipeline-spcs-emulator.yaml"
    assert "poll_secs: 1}" in example.read_text()
    example.write_text(example.read_text().replace("poll_secs: 1}", "poll_secs: 0.2}"))
    result = cli("run", "pipeline-spcs-emulator.yaml", check=0, timeout=300)
    assert "jobgraph's local SPCS emulator (Podman), not Snowflake" in result.stderr
    assert "t_myjob_6 SUCCEEDED" in result.stdout
    with Store(store_url(tmp_path)) as records:
        [summary] = records.runs()
        assert summary.state == "SUCCEEDED"
        tries = records.attempts(summary.run_id)
        assert sorted(a.task for a in tries) == [f"t_myjob_{i}" for i in range(1, 7)]
        for attempt in tries:
            assert (attempt.runner, attempt.status, attempt.exit_code) == ("spcs", "DONE", 0)
            assert attempt.backend_ref and attempt.backend_ref.startswith("JG_")
            table = "results_" + attempt.task.rsplit("_", 1)[1]
            assert attempt.log_path.read_text() == f"1 row(s) appended to {table}\n"
        assert len({a.backend_ref for a in tries}) == 6
        columns, rows = records.view("jobs_run_stats", 100)
        assert {row[columns.index("job_status")] for row in rows} == {"DONE"} and len(rows) == 6


def test_a_failing_job_service_is_failed_with_its_logs_and_retried_as_new_services(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient) -> None:
    bad_query = {"name": "t_bad", "image": SEED_IMAGE, "pool": "PR_STD_POOL_S", "retries": 1,
                 "args": ["--query=select nonsense from no_such_table", "--result_table=results_bad"]}
    flaky = box("t_flaky", 'echo "try $JOBGRAPH_ATTEMPT"; [ "$JOBGRAPH_ATTEMPT" -ge 2 ]', retries=2)
    write_pipeline(emulated("failing", [bad_query, flaky]), with_sh=False)
    cli("run", "pipeline.yaml", check=1, timeout=300)
    with Store(store_url(tmp_path)) as records:
        [summary] = records.runs()
        assert summary.state == "FAILED"
        bad = records.attempts(summary.run_id, "t_bad")
        assert [(a.attempt, a.status, a.exit_code) for a in bad] == [(1, "FAILED", 1), (2, "FAILED", 1)]
        for attempt in bad:
            assert attempt.error is not None and "container exited with code 1" in attempt.error
            assert "no such table: no_such_table" in attempt.error
            assert "error: no such table: no_such_table" in attempt.log_path.read_text()
        assert bad[0].backend_ref != bad[1].backend_ref  # every attempt its own job service
        flaky_tries = records.attempts(summary.run_id, "t_flaky")
        assert [(a.attempt, a.status) for a in flaky_tries] == [(1, "FAILED"), (2, "DONE")]
        assert flaky_tries[1].log_path.read_text() == "try 2\n"
        assert {t.task: t.state for t in records.tasks(summary.run_id)} == {"t_bad": "FAILED",
                                                                           "t_flaky": "SUCCEEDED"}
        ended = [str(a.backend_ref) for a in [*bad, *flaky_tries]]
    # every ended job service is dropped once read: its status, exit code and log are in jobgraph's store
    assert len(set(ended)) == 4 and services(podman, ended) == []
    # the query repaired, `jobgraph retry` runs the failed job again as new job services, and keeps what succeeded
    bad_query["args"] = ["--query=select 1 as one", "--result_table=results_bad"]
    write_pipeline(emulated("failing", [bad_query, flaky]), with_sh=False)
    cli("retry", summary.run_id, "--file", "pipeline.yaml", check=0, timeout=300)
    with Store(store_url(tmp_path)) as records:
        assert records.run(summary.run_id).state == "SUCCEEDED"
        bad = records.attempts(summary.run_id, "t_bad")
        assert [(a.status, a.run_attempt) for a in bad][-1] == ("DONE", 2) and len(bad) == 3
        assert bad[-1].log_path.read_text() == "1 row(s) appended to results_bad\n"
        assert len({a.backend_ref for a in bad}) == 3 and bad[-1].backend_ref not in ended
        assert [a.attempt for a in records.attempts(summary.run_id, "t_flaky")] == [1, 2]  # kept, not run again


@pytest.mark.parametrize("how", ["ctrl-c", "jobgraph cancel"])
def test_a_cancelled_run_drops_its_job_services_and_leaves_no_container(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient, how: str) -> None:
    write_pipeline(emulated("long", [box("t_long", "echo working on it; sleep 300"),
                                     box("t_later", "true", after=["t_long"])]), with_sh=False)
    process = start(tmp_path, "run", "pipeline.yaml")
    try:
        run_id, service = submitted(tmp_path, "t_long")
        wait_until(lambda: printed(podman, service, "working on it"))
        began = time.monotonic()
        if how == "ctrl-c":
            process.send_signal(signal.SIGINT)
        else:
            cli("cancel", run_id, check=0, timeout=120)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out + err
    assert time.monotonic() - began < 60
    assert services(podman, [service]) == []
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).state == "CANCELLED"
        [attempt] = records.attempts(run_id)
        assert (attempt.task, attempt.status, attempt.backend_ref) == ("t_long", "CANCELLED", service)
        assert attempt.log_path.read_text() == "working on it\n"  # read before DROP SERVICE took it away
        assert {t.task: t.state for t in records.tasks(run_id)} == {"t_long": "CANCELLED", "t_later": "CANCELLED"}


def of_run(client: docker.DockerClient, run_id: str) -> list[str]:
    """The services in Podman that a run submitted, by their COMMENT (found even if their name was never stored)."""
    listed = client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, sparse=True)
    return [c.attrs["Labels"].get(f"{LABEL}.name") for c in listed
            if f" run {run_id} " in c.attrs["Labels"].get(f"{LABEL}.comment", "")]


def test_cancelling_a_run_whose_jobgraph_was_killed_drops_its_services_with_what_they_printed(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient) -> None:
    """`jobgraph cancel` of a run whose jobgraph died (kill -9) adopts its job services and drops them: their logs
    are read first, as when the run's own jobgraph cancels."""
    write_pipeline(emulated("orphan", [box("t_long", "echo half way; sleep 300")]), with_sh=False)
    process = start(tmp_path, "run", "pipeline.yaml")
    try:
        run_id, service = submitted(tmp_path, "t_long")
        wait_until(lambda: printed(podman, service, "half way"))
    finally:
        process.kill()
        process.wait(timeout=30)
    assert running(podman, service)
    cli("cancel", run_id, check=0, timeout=120)
    assert services(podman, [service]) == []
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).state == "CANCELLED"
        [attempt] = records.attempts(run_id)
        assert (attempt.status, attempt.backend_ref) == ("CANCELLED", service)
        assert attempt.log_path.read_text() == "half way\n"


@pytest.mark.parametrize("delay", [0.0, 0.4, 1.0])
def test_ctrl_c_whenever_it_lands_leaves_no_job_service(
        tmp_path: Path, write_pipeline: WritePipeline, podman: docker.DockerClient, delay: float) -> None:
    """Connecting, submitting, polling: whenever Ctrl-C comes, every service the run submitted is dropped."""
    write_pipeline(emulated("early", [box(f"t_{i}", "sleep 300", pool="PR_STD_POOL_S") for i in range(3)]),
                   with_sh=False)
    process = start(tmp_path, "run", "pipeline.yaml")
    runs: list[str] = []

    def started() -> bool:
        if (tmp_path / ".jobgraph" / "jobgraph.db").exists():
            with Store(store_url(tmp_path)) as records:
                runs.extend(run.run_id for run in records.runs(1))
        return bool(runs)

    try:
        wait_until(started)
        time.sleep(delay)  # the moment the signal lands, not a wait for anything
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out + err
    assert of_run(podman, runs[0]) == []
    with Store(store_url(tmp_path)) as records:
        assert records.run(runs[0]).state == "CANCELLED"
        assert {a.status for a in records.attempts(runs[0])} <= {"CANCELLED"}


def test_after_kill_9_the_job_service_runs_on_and_the_next_jobgraph_adopts_it_and_records_its_real_end(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient) -> None:
    write_pipeline(emulated("adopted", [box("t_long", "sleep 5; echo finished"),
                                        box("t_after", "echo after", after=["t_long"])]), with_sh=False)
    process = start(tmp_path, "run", "pipeline.yaml")
    run_id, service = submitted(tmp_path, "t_long")
    wait_until(lambda: running(podman, service))
    process.kill()
    process.wait(timeout=30)
    assert running(podman, service)  # nothing of the job service was stopped with jobgraph
    (tmp_path / "other.yaml").write_text("name: other\nimages: {sh: [sh, -c]}\njobs: [{name: x, image: sh, "
                                         "args: ['true']}]\n")
    result = cli("run", "other.yaml", check=0, timeout=180)
    assert f"t_long attempt 1 (spcs {service})" in result.stderr
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).state == "SUCCEEDED"
        [long] = records.attempts(run_id, "t_long")
        assert (long.status, long.exit_code, long.backend_ref) == ("DONE", 0, service)
        assert long.duration_secs is not None and long.duration_secs >= 5
        assert long.log_path.read_text() == "finished\n"
        [after] = records.attempts(run_id, "t_after")
        assert after.status == "DONE" and after.log_path.read_text() == "after\n"


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.3, 0.8])
def test_kill_9_whenever_it_lands_leaves_no_job_service_unaccounted_for(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient, delay: float) -> None:
    """Before, during or after EXECUTE JOB SERVICE: the next jobgraph adopts what was submitted (by its recorded
    name, or found by its comment) and records how it ended; nothing of the run is left in Podman."""
    write_pipeline(emulated("killed", [box("t_job", "sleep 2; echo done")]), with_sh=False)
    process = start(tmp_path, "run", "pipeline.yaml")
    runs: list[str] = []

    def started() -> bool:
        if (tmp_path / ".jobgraph" / "jobgraph.db").exists():
            with Store(store_url(tmp_path)) as records:
                runs.extend(run.run_id for run in records.runs(1))
        return bool(runs)

    wait_until(started)
    time.sleep(delay)  # the moment the kill lands, not a wait for anything
    process.kill()
    process.wait(timeout=30)
    submitted_then = of_run(podman, runs[0])
    (tmp_path / "other.yaml").write_text("name: other\nimages: {sh: [sh, -c]}\njobs: [{name: x, image: sh, "
                                         "args: ['true']}]\n")
    cli("run", "other.yaml", check=0, timeout=180)
    with Store(store_url(tmp_path)) as records:
        run = records.run(runs[0])
        tries = records.attempts(runs[0], "t_job")
        assert run.state != "RUNNING" and all(a.finished_at is not None for a in tries)
        for name in submitted_then:  # every service it had submitted was adopted and recorded to its end
            [adopted] = [a for a in tries if a.backend_ref == name]
            assert (adopted.status, adopted.exit_code) == ("DONE", 0) and adopted.log_path.read_text() == "done\n"
    assert of_run(podman, runs[0]) == []


def test_a_job_service_that_ended_while_jobgraph_was_down_is_recorded_with_its_real_end(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient) -> None:
    write_pipeline(emulated("ended", [box("t_quick", "sleep 2; echo failing; exit 4")]), with_sh=False)
    process = start(tmp_path, "run", "pipeline.yaml")
    run_id, service = submitted(tmp_path, "t_quick")
    wait_until(lambda: running(podman, service))
    process.kill()
    process.wait(timeout=30)
    wait_until(lambda: not running(podman, service))  # it ended while no jobgraph watched
    time.sleep(6)  # and stayed unseen a while: the record must say when it ended, not when it was seen
    (tmp_path / "other.yaml").write_text("name: other\nimages: {sh: [sh, -c]}\njobs: [{name: x, image: sh, "
                                         "args: ['true']}]\n")
    cli("run", "other.yaml", check=0, timeout=180)
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).state == "FAILED"
        [quick] = records.attempts(run_id, "t_quick")
        assert (quick.status, quick.exit_code, quick.backend_ref) == ("FAILED", 4, service)
        assert quick.error is not None and "container exited with code 4" in quick.error
        assert quick.log_path.read_text() == "failing\n"
        # the end is the service's updated_on: when its container exited, not when jobgraph saw it (>= 8 s)
        assert quick.duration_secs is not None and 2 <= quick.duration_secs < 7.5, quick.duration_secs


def test_a_job_service_dropped_by_someone_else_is_an_error_that_says_so(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient) -> None:
    write_pipeline(emulated("dropped", [box("t_long", "sleep 300")]), with_sh=False)
    process = start(tmp_path, "run", "pipeline.yaml")
    try:
        run_id, service = submitted(tmp_path, "t_long")
        wait_until(lambda: running(podman, service))
        other = EmulatorSession(SpcsSettings.model_validate({"emulator": True}), {})
        try:  # `DROP SERVICE` from another session
            other.execute(sql.DROP_SERVICE, (service,))
        finally:
            other.close()
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, out + err
    with Store(store_url(tmp_path)) as records:
        [attempt] = records.attempts(run_id, "t_long")
        assert attempt.status == "ERROR"
        assert f"job service {service} was dropped by someone else, not by jobgraph" in (attempt.error or "")


def test_a_job_in_a_suspended_compute_pool_is_an_error_naming_the_pool_and_never_runs(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POOLS_VARIABLE, "PR_STD_POOL_XS:SUSPENDED")
    marker = tmp_path / "ran"
    write_pipeline(emulated("suspended", [box("t_one", f"touch {marker}")]), with_sh=False)
    cli("run", "pipeline.yaml", check=1, timeout=120)
    with Store(store_url(tmp_path)) as records:
        [summary] = records.runs()
        [attempt] = records.attempts(summary.run_id)
        assert attempt.status == "ERROR" and "compute pool PR_STD_POOL_XS was suspended" in (attempt.error or "")
    assert not marker.exists()


def test_a_pool_that_does_not_exist_is_a_clear_error_and_nothing_runs(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POOLS_VARIABLE, "PR_STD_POOL_XS")  # the account has one of the file's two pools
    write_pipeline(emulated("pools", [box("t_one", "true"), box("t_two", "true", pool="PR_STD_POOL_S")]),
                   with_sh=False)
    result = cli("run", "pipeline.yaml", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert ("compute pool PR_STD_POOL_S (pool of job t_two) does not exist in the emulator; the compute pools "
            "there: PR_STD_POOL_XS") in result.stderr
    assert "nothing was run" in result.stderr and "Traceback" not in result.stderr
    listed = podman.containers.list(all=True, filters={"label": f"{LABEL}=1"}, sparse=True)
    assert [c for c in listed if "jobgraph pipeline pools run" in c.attrs["Labels"].get(f"{LABEL}.comment", "")] == []
    if (tmp_path / ".jobgraph" / "jobgraph.db").exists():
        with Store(store_url(tmp_path)) as records:
            assert [a for run in records.runs() for a in records.attempts(run.run_id)] == []


def test_a_secret_goes_by_reference_reaches_the_job_and_never_the_log_the_error_or_the_store(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "s3cr3t-value")  # what the emulator stands in for Snowflake's secret with
    document = emulated("secret", [box("t_uses", 'echo "token is $API_TOKEN"; exit 1', secrets=["API_TOKEN"])])
    document["runners"] = {"spcs": {**SETTINGS["spcs"], "secrets": {"API_TOKEN": "tutorial_db.data_schema.api_token"}}}
    write_pipeline(document, with_sh=False)
    plan = cli("plan", "pipeline.yaml", "--runner", "spcs", check=0)
    assert "TUTORIAL_DB.DATA_SCHEMA.API_TOKEN" in plan.stdout.upper() and "s3cr3t" not in plan.stdout
    cli("run", "pipeline.yaml", check=1, timeout=120)
    with Store(store_url(tmp_path)) as records:
        [summary] = records.runs()
        [attempt] = records.attempts(summary.run_id)
        assert attempt.log_path.read_text() == "token is ***\n"
        assert attempt.error is not None and "token is ***" in attempt.error and "s3cr3t" not in attempt.error
    assert b"s3cr3t" not in (tmp_path / ".jobgraph" / "jobgraph.db").read_bytes()


def test_a_job_service_past_its_timeout_is_dropped_and_recorded_as_a_timeout_with_what_it_printed(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "s3cr3t-value")
    document = emulated("slow", [box("t_slow", "echo started; echo token is $API_TOKEN; sleep 300", timeout="4s",
                                     secrets=["API_TOKEN"])])
    document["runners"] = {"spcs": {**SETTINGS["spcs"], "secrets": {"API_TOKEN": "tutorial_db.data_schema.api_token"}}}
    write_pipeline(document, with_sh=False)
    started = time.monotonic()
    cli("run", "pipeline.yaml", check=1, timeout=120)
    assert time.monotonic() - started < 60
    with Store(store_url(tmp_path)) as records:
        [summary] = records.runs()
        [attempt] = records.attempts(summary.run_id)
        assert attempt.status == "TIMEOUT" and attempt.backend_ref
        # what it printed before the timeout, read before DROP SERVICE took it away, redacted; and in the error
        assert attempt.log_path.read_text() == "started\ntoken is ***\n"
        assert attempt.error == "timed out after 4s\nstarted\ntoken is ***"
    assert services(podman, [attempt.backend_ref]) == []
    assert b"s3cr3t" not in (tmp_path / ".jobgraph" / "jobgraph.db").read_bytes()


def test_a_job_service_that_never_gets_a_node_is_an_error_after_the_pending_limit_and_retried(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, podman: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POOLS_VARIABLE, "PR_STD_POOL_XS:STARTING,PR_STD_POOL_S")  # a pool that never gets a node
    marker = tmp_path / "ran"
    document = emulated("stuck", [box("t_stuck", f"touch {marker}", retries=1),
                                  box("t_fine", "echo fine", pool="PR_STD_POOL_S")])
    document["runners"] = {"spcs": {**SETTINGS["spcs"], "pending_limit_secs": 1}}
    write_pipeline(document, with_sh=False)
    started = time.monotonic()
    cli("run", "pipeline.yaml", check=1, timeout=120)
    assert time.monotonic() - started < 60
    with Store(store_url(tmp_path)) as records:
        [summary] = records.runs()
        assert summary.state == "FAILED"
        stuck = records.attempts(summary.run_id, "t_stuck")
        assert [(a.attempt, a.status, a.exit_code) for a in stuck] == [(1, "ERROR", None), (2, "ERROR", None)]
        for attempt in stuck:
            assert attempt.error == (
                f"job service {attempt.backend_ref} stayed PENDING for 1s (runners.spcs.pending_limit_secs): SPCS "
                "has placed it on no node yet (compute pool PR_STD_POOL_XS is STARTING, 0 of 1 nodes active); "
                f"dropped it (DROP SERVICE {attempt.backend_ref})")
            assert attempt.duration_secs is not None and attempt.duration_secs >= 1
        [fine] = records.attempts(summary.run_id, "t_fine")
        assert (fine.status, fine.log_path.read_text()) == ("DONE", "fine\n")
        refs = [str(a.backend_ref) for a in [*stuck, fine]]
    assert len(set(refs)) == 3 and services(podman, refs) == []
    assert not marker.exists()
