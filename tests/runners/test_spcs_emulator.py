"""The SPCS emulator against a real Podman: the runner's own statements (spcs_statements) in, SPCS's rows out."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from jobgraph.config.model import Pool
from jobgraph.runners import spcs_statements as sql
from jobgraph.runners.base import JobSpec
from jobgraph.runners.spcs_emulator import (
    LABEL,
    LOG_LIMIT_BYTES,
    POOLS_VARIABLE,
    EmulatorError,
    EmulatorSession,
    like,
    resolve_identifier,
)
from jobgraph.runners.spcs_emulator_spec import SpecError, parse_spec
from jobgraph.runners.spcs_spec import SpcsSettings, job_spec, service_name, spec_yaml
from tests.runners.conftest import SQL_IMAGE, TEST_IMAGE

SEED_IMAGE = "/tutorial_db/data_schema/tutorial_repository/my_job_image:latest"
POOLS = {"PR_STD_POOL_XS": Pool(max_parallel=1, instance_family="CPU_X64_XS"),
         "PR_STD_POOL_S": Pool(max_parallel=2, instance_family="CPU_X64_S")}


def spec(args: list[str], image: str = "/db/schema/repo/box:1", **container: Any) -> str:
    """A job service's specification as the runner writes it: one container `main`."""
    return yaml.safe_dump({"spec": {"containers": [{"name": "main", "image": image, "args": args, **container}],
                                    "logExporters": {"eventTableConfig": {"logLevel": "INFO"}}}})


@pytest.fixture
def session(engine: docker.DockerClient, tmp_path: Path) -> Iterator[EmulatorSession]:
    """An emulator on the session's Podman; every service this test made is dropped after it."""
    settings = SpcsSettings.model_validate({"emulator": True, "database": "tutorial_db", "schema": "data_schema"})
    emulator = EmulatorSession(settings, {"/db/schema/repo/box:1": TEST_IMAGE, SEED_IMAGE: SQL_IMAGE},
                               pools=POOLS, folder=tmp_path / ".jobgraph")
    try:
        yield emulator
    finally:
        emulator.close()


@pytest.fixture
def names(engine: docker.DockerClient) -> Iterator[list[str]]:
    """Service names unique to this test; none of their containers may be left when it ends."""
    made: list[str] = []
    yield made
    left = [c for c in engine.containers.list(all=True, filters={"label": f"{LABEL}=1"}, sparse=True)
            if c.attrs["Labels"].get(f"{LABEL}.name") in made]
    for container in left:
        container.remove(force=True)
    assert left == []


def new_name(names: list[str], job: str = "JOB") -> str:
    name = f"JG_T{uuid.uuid4().hex[:8].upper()}_{job}_1"
    names.append(name)
    return name


def run(session: EmulatorSession, statement: sql.Statement) -> list[dict[str, object]]:
    return session.execute(statement.sql, statement.params)


def submit(session: EmulatorSession, name: str, text: str, pool: str = "PR_STD_POOL_XS",
           settings: SpcsSettings | None = None, comment: str | None = "jobgraph run") -> None:
    settings = settings or SpcsSettings.model_validate({"emulator": True})
    run(session, sql.execute_job_service(pool, name, text, settings, comment))


def wait_for(session: EmulatorSession, name: str, *statuses: str) -> dict[str, object]:
    """The service's row once its status is one of `statuses` (polled as the runner polls)."""
    deadline = time.monotonic() + 60
    while True:
        [row] = run(session, sql.describe_service(name))
        if row["status"] in statuses or time.monotonic() > deadline:
            assert row["status"] in statuses, row
            return row
        time.sleep(0.1)


def logs(session: EmulatorSession, name: str, lines: int = 100) -> str:
    [row] = run(session, sql.service_logs(name, "0", "main", lines))
    [text] = row.values()
    assert isinstance(text, str)
    return text


def test_a_job_service_runs_its_container_and_ends_done_with_its_logs(
        session: EmulatorSession, names: list[str], engine: docker.DockerClient) -> None:
    name = new_name(names)
    script = 'echo "args $0 $1 env $GREETING"; echo to-stderr >&2; ip route | wc -l'
    submit(session, name, spec(["sh", "-c", script, "x", "y"], env={"GREETING": "hi", "N": 3}))
    [container] = engine.containers.list(all=True, filters={"label": f"{LABEL}.name={name}"})
    assert container.name == name and container.image.tags == [TEST_IMAGE]
    assert container.labels[f"{LABEL}.pool"] == "PR_STD_POOL_XS" and container.labels[LABEL] == "1"
    row = wait_for(session, name, "DONE")
    assert (row["name"], row["compute_pool"], row["is_job"], row["comment"]) == (name, "PR_STD_POOL_XS", True,
                                                                                  "jobgraph run")
    assert (row["database_name"], row["schema_name"]) == ("TUTORIAL_DB", "DATA_SCHEMA")
    [box] = run(session, sql.show_service_containers(name))
    assert (box["service_status"], box["status"], box["message"], box["last_exit_code"]) == (
        "DONE", "DONE", "Completed successfully", 0)
    assert (box["instance_id"], box["instance_status"], box["container_name"]) == ("0", "SUCCEEDED", "main")
    assert box["image_name"] == "/db/schema/repo/box:1"
    # stdout and stderr, and no network at all (no external access integration): not even a route
    assert logs(session, name) == "args x y env hi\nto-stderr\n0\n"
    assert run(session, sql.drop_service(name)) == [{"status": f"{name} successfully dropped."}]
    assert engine.containers.list(all=True, filters={"label": f"{LABEL}.name={name}"}) == []


def test_a_failing_container_is_failed_with_its_exit_code_in_the_message_and_its_logs_kept(
        session: EmulatorSession, names: list[str]) -> None:
    name = new_name(names)
    submit(session, name, spec(["sh", "-c", "echo something broke >&2; exit 3"]))
    assert wait_for(session, name, "DONE", "FAILED")["status"] == "FAILED"
    [box] = run(session, sql.show_service_containers(name))
    assert (box["status"], box["message"], box["last_exit_code"], box["instance_status"]) == (
        "FAILED", "container exited with code 3", 3, "FAILED")
    assert logs(session, name) == "something broke\n"
    run(session, sql.drop_service(name))


def test_the_runners_own_spec_of_a_seed_job_runs_the_local_sql_job_image_with_the_seed_args(
        session: EmulatorSession, names: list[str], tmp_path: Path, engine: docker.DockerClient) -> None:
    job = JobSpec(run_id=uuid.uuid4().hex, pipeline="root_task", task="t_myjob_1", attempt=1, image=SEED_IMAGE,
                  args=("--query=select current_time() as time,'hello'", "--result_table=results_1"),
                  env={"JOBGRAPH_TASK": "t_myjob_1"}, log_path=tmp_path / "log", pool="PR_STD_POOL_XS")
    name = service_name(job)
    names.append(name)
    settings = SpcsSettings.model_validate({"emulator": True})
    text = spec_yaml(job_spec(job, settings, Pool(max_parallel=1, cpu=1, memory="512m")))
    submit(session, name, text, settings=settings)
    [container] = engine.containers.list(all=True, filters={"label": f"{LABEL}.name={name}"})
    limits = container.attrs["HostConfig"]
    assert (limits["Memory"], limits["NanoCpus"], limits["NetworkMode"]) == (512 << 20, 10**9, "none")
    assert container.attrs["Config"]["Env"].count("JOBGRAPH_TASK=t_myjob_1") == 1
    wait_for(session, name, "DONE")
    assert logs(session, name) == "1 row(s) appended to results_1\n"
    run(session, sql.drop_service(name))


def test_an_ended_service_says_when_it_started_and_ended_to_the_microsecond(
        session: EmulatorSession, names: list[str]) -> None:
    """What an adopted attempt's real end is read from (Podman's list alone gives whole seconds)."""
    name = new_name(names)
    submit(session, name, spec(["sh", "-c", "sleep 1.5"]))
    row = wait_for(session, name, "DONE")
    [box] = run(session, sql.show_service_containers(name))
    created, started, ended = row["created_on"], box["start_time"], row["updated_on"]
    assert isinstance(created, datetime) and isinstance(started, datetime) and isinstance(ended, datetime)
    assert created <= started < ended <= datetime.now(UTC)
    assert 1.4 <= (ended - started).total_seconds() < 4  # to the microsecond: whole seconds would not do
    [listed] = [r for r in run(session, sql.show_job_services(name)) if r["name"] == name]
    assert listed["updated_on"] == ended
    run(session, sql.drop_service(name))


def test_a_running_service_is_running_then_drop_kills_and_removes_it(
        session: EmulatorSession, names: list[str], engine: docker.DockerClient) -> None:
    name = new_name(names)
    submit(session, name, spec(["sh", "-c", "echo started; sleep 300"]))
    row = wait_for(session, name, "RUNNING")
    assert row["current_instances"] == 1
    [box] = run(session, sql.show_service_containers(name))
    assert (box["status"], box["instance_status"], box["last_exit_code"]) == ("READY", "READY", None)
    [pools] = [p for p in run(session, sql.show_compute_pools()) if p["name"] == "PR_STD_POOL_XS"]
    assert pools["num_jobs"] >= 1 and pools["state"] == "ACTIVE"
    started = time.monotonic()
    run(session, sql.drop_service(name))
    assert time.monotonic() - started < 15  # killed, not waited for
    assert engine.containers.list(all=True, filters={"label": f"{LABEL}.name={name}"}) == []
    with pytest.raises(EmulatorError, match=f"002003 \\(02000\\): SQL compilation error:\nService '{name}' does "
                                            "not exist or not authorized."):
        run(session, sql.describe_service(name))
    assert run(session, sql.drop_service(name)) == [
        {"status": f"Drop statement executed successfully ({name} already dropped)."}]


def test_one_show_job_services_lists_every_matching_service_with_its_status(
        session: EmulatorSession, names: list[str]) -> None:
    run_id = uuid.uuid4().hex[:8].upper()
    first, second = f"JG_{run_id}_A_1", f"JG_{run_id}_B_1"
    names.extend([first, second])
    submit(session, first, spec(["sh", "-c", "exit 0"]))
    submit(session, second, spec(["sh", "-c", "sleep 300"]), pool="PR_STD_POOL_S")
    wait_for(session, first, "DONE")
    rows = run(session, sql.show_job_services(f"jg\\_{run_id.lower()}\\_%"))
    assert [(r["name"], r["status"], r["compute_pool"]) for r in rows] == [
        (first, "DONE", "PR_STD_POOL_XS"), (second, "RUNNING", "PR_STD_POOL_S")]
    assert run(session, sql.show_job_services(f"JG_{run_id}_C%")) == []
    for name in (first, second):
        run(session, sql.drop_service(name))


def test_a_new_session_finds_the_services_of_one_that_is_gone(
        session: EmulatorSession, names: list[str], tmp_path: Path) -> None:
    """Podman is the emulator's only state: a jobgraph killed and started again adopts by name."""
    name = new_name(names)
    submit(session, name, spec(["sh", "-c", "sleep 2; echo finished"]))
    session.close()
    later = EmulatorSession(SpcsSettings.model_validate({"emulator": True}), {}, pools=POOLS, folder=tmp_path)
    try:
        assert wait_for(later, name, "DONE")["status"] == "DONE"
        assert logs(later, name) == "finished\n"
        run(later, sql.drop_service(name))
    finally:
        later.close()


def test_without_an_engine_to_reach_it_starts_a_podman_service_of_its_own_and_stops_it_and_the_jobs_run_on(
        engine: docker.DockerClient, names: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = os.environ["DOCKER_HOST"]
    monkeypatch.delenv("DOCKER_HOST")  # as on a laptop with no Podman socket running
    settings = SpcsSettings.model_validate({"emulator": True})
    own = EmulatorSession(settings, {"/db/schema/repo/box:1": TEST_IMAGE}, pools=POOLS, folder=tmp_path / "jg")
    name = new_name(names)
    submit(own, name, spec(["sh", "-c", "sleep 2; echo outlived"]))
    service = own._service
    folder = tmp_path / "jg" / f"spcs-emulator-{os.getpid()}"
    assert service is not None and service.process is not None
    assert service.base_url == f"unix://{folder / 'podman.sock'}"
    process = service.process
    own.close()
    assert process.poll() is not None and not folder.exists()
    monkeypatch.setenv("DOCKER_HOST", shared)
    later = EmulatorSession(settings, {}, pools=POOLS, folder=tmp_path / "jg")
    try:
        assert wait_for(later, name, "DONE")["status"] == "DONE"  # the job outlived the service that started it
        assert logs(later, name) == "outlived\n"
        run(later, sql.drop_service(name))
    finally:
        later.close()


def test_a_pool_that_is_not_listed_does_not_exist_and_nothing_is_created(
        session: EmulatorSession, names: list[str], engine: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = new_name(names)
    with pytest.raises(EmulatorError, match="Compute pool 'NO_SUCH_POOL' does not exist or not authorized") as info:
        submit(session, name, spec(["true"]), pool="no_such_pool")
    assert (info.value.errno, info.value.sqlstate) == (2003, "02000")
    monkeypatch.setenv(POOLS_VARIABLE, "PR_STD_POOL_XS")
    assert [p["name"] for p in run(session, sql.show_compute_pools())] == ["PR_STD_POOL_XS"]
    with pytest.raises(EmulatorError, match="Compute pool 'PR_STD_POOL_S' does not exist"):
        submit(session, name, spec(["true"]), pool="PR_STD_POOL_S")
    assert engine.containers.list(all=True, filters={"label": f"{LABEL}.name={name}"}) == []


def test_the_pools_of_the_pipeline_are_listed_as_snowflake_lists_them(session: EmulatorSession) -> None:
    rows = {r["name"]: r for r in run(session, sql.show_compute_pools())}
    assert set(rows) == {"PR_STD_POOL_XS", "PR_STD_POOL_S"}
    assert (rows["PR_STD_POOL_S"]["instance_family"], rows["PR_STD_POOL_S"]["max_nodes"]) == ("CPU_X64_S", 2)
    assert "not Snowflake" in str(rows["PR_STD_POOL_S"]["comment"])


def test_a_job_in_a_suspended_pool_is_suspended_and_never_runs(
        session: EmulatorSession, names: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POOLS_VARIABLE, "PR_STD_POOL_XS:SUSPENDED")
    name = new_name(names)
    submit(session, name, spec(["sh", "-c", "echo ran"]))
    [pool] = run(session, sql.show_compute_pools())
    assert (pool["name"], pool["state"]) == ("PR_STD_POOL_XS", "SUSPENDED")
    assert run(session, sql.describe_service(name))[0]["status"] == "SUSPENDED"
    [box] = run(session, sql.show_service_containers(name))
    assert (box["service_status"], box["instance_id"], box["status"]) == ("SUSPENDED", None, None)
    assert logs(session, name) == ""
    run(session, sql.drop_service(name))


def test_an_accepted_service_not_started_yet_starts_at_the_next_look_once_its_pool_runs_jobs(
        session: EmulatorSession, names: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """As Snowflake's: a service EXECUTE accepted runs, even if the EXECUTE was cut short between Podman's create
    and start (a jobgraph killed right then), or its pool was suspended and is resumed."""
    monkeypatch.setenv(POOLS_VARIABLE, "PR_STD_POOL_XS:SUSPENDED")
    name = new_name(names)
    submit(session, name, spec(["sh", "-c", "echo ran"]))
    assert run(session, sql.describe_service(name))[0]["status"] == "SUSPENDED"
    monkeypatch.setenv(POOLS_VARIABLE, "PR_STD_POOL_XS")  # ALTER COMPUTE POOL ... RESUME
    wait_for(session, name, "DONE")
    assert logs(session, name) == "ran\n"
    run(session, sql.drop_service(name))


def test_a_job_in_a_pool_with_no_node_stays_pending_until_the_pool_gets_one(
        session: EmulatorSession, names: list[str], engine: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool listed STARTING never gets a node (as when none is free): its services stay PENDING, for a runner's
    pending limit to be tried on; listed otherwise, they start at the next look."""
    monkeypatch.setenv(POOLS_VARIABLE, "PR_STD_POOL_XS:STARTING")
    name = new_name(names)
    submit(session, name, spec(["sh", "-c", "echo ran"]))
    for _ in range(3):  # every look leaves it waiting
        [row] = run(session, sql.show_job_services(name))
        assert row["status"] == "PENDING"
    [box] = run(session, sql.show_service_containers(name))
    assert (box["service_status"], box["instance_id"], box["status"], box["message"]) == ("PENDING", None, None, None)
    [pool] = run(session, sql.show_compute_pools())
    assert (pool["state"], pool["active_nodes"], pool["idle_nodes"], pool["num_jobs"]) == ("STARTING", 0, 0, 1)
    [container] = engine.containers.list(all=True, filters={"label": f"{LABEL}.name={name}"})
    assert container.status == "created"  # never started
    monkeypatch.setenv(POOLS_VARIABLE, "PR_STD_POOL_XS")  # the pool got its node
    wait_for(session, name, "DONE")
    assert logs(session, name) == "ran\n"
    run(session, sql.drop_service(name))


def test_a_name_taken_already_exists_and_the_first_service_is_untouched(
        session: EmulatorSession, names: list[str]) -> None:
    name = new_name(names)
    submit(session, name, spec(["sh", "-c", "sleep 300"]))
    with pytest.raises(EmulatorError, match=f"Object '{name}' already exists") as info:
        submit(session, name, spec(["sh", "-c", "echo second"]))
    assert info.value.errno == 2002
    assert wait_for(session, name, "RUNNING")["status"] == "RUNNING"
    run(session, sql.drop_service(name))


def test_logs_are_the_last_lines_asked_and_at_most_100_kb(session: EmulatorSession, names: list[str]) -> None:
    name = new_name(names)
    script = "seq 1 5000; echo; head -c 300000 /dev/zero | tr '\\000' x; echo; echo end"
    submit(session, name, spec(["sh", "-c", script]))
    wait_for(session, name, "DONE")
    assert logs(session, name, 1) == "end\n"
    text = logs(session, name, 10_000)
    assert len(text.encode()) == LOG_LIMIT_BYTES and text.endswith("end\n") and "x" * 90_000 in text
    with pytest.raises(EmulatorError, match="container 'other' of service"):
        run(session, sql.service_logs(name, "0", "other", 10))
    with pytest.raises(EmulatorError, match="instance '1' of service"):
        run(session, sql.service_logs(name, "1", "main", 10))
    run(session, sql.drop_service(name))


def test_a_missing_image_is_refused_at_submit_naming_container_images(
        session: EmulatorSession, names: list[str]) -> None:
    name = new_name(names)
    with pytest.raises(EmulatorError, match=r"image '/db/other/repo/img:2' .* container_images"):
        submit(session, name, spec(["true"], image="/db/other/repo/img:2"))


def test_secrets_by_reference_take_their_value_from_jobgraphs_environment(
        session: EmulatorSession, names: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    name = new_name(names)
    secrets = [{"snowflakeSecret": {"objectName": "my_db_password"}, "envVarName": "DB_PASSWORD",
                "secretKeyRef": "secret_string"}]
    with pytest.raises(EmulatorError, match=r"no Snowflake secret my_db_password: .* DB_PASSWORD, which is not set"):
        submit(session, name, spec(["sh", "-c", 'echo "pw=$DB_PASSWORD"'], secrets=secrets))
    monkeypatch.setenv("DB_PASSWORD", "s3cr3t")
    submit(session, name, spec(["sh", "-c", 'echo "pw=$DB_PASSWORD"'], secrets=secrets))
    wait_for(session, name, "DONE")
    assert logs(session, name) == "pw=s3cr3t\n"  # the runner redacts what it stores
    run(session, sql.drop_service(name))


def test_external_access_integrations_warehouse_and_comment_are_read_from_their_binds(
        session: EmulatorSession, names: list[str]) -> None:
    name = new_name(names)
    settings = SpcsSettings.model_validate({"emulator": True, "warehouse": "tutorial_warehouse",
                                            "external_access_integrations": ["eai_one", "eai_two"]})
    submit(session, name, spec(["sh", "-c", "ip route | grep -c default || true"]), settings=settings,
           comment="it's a 'comment' with $$ and \\ and ; DROP SERVICE x\n-- and a second line")
    row = wait_for(session, name, "DONE")
    assert row["query_warehouse"] == "TUTORIAL_WAREHOUSE"
    assert row["external_access_integrations"] == '["EAI_ONE", "EAI_TWO"]'
    assert row["comment"] == "it's a 'comment' with $$ and \\ and ; DROP SERVICE x\n-- and a second line"
    assert logs(session, name) == "1\n"  # a network with a default route (the engine's) once an integration is named
    run(session, sql.drop_service(name))


def test_concurrent_submits_from_worker_threads_each_get_their_service(
        session: EmulatorSession, names: list[str]) -> None:
    chosen = [new_name(names, f"J{i}") for i in range(4)]
    failures: list[BaseException] = []

    def one(name: str) -> None:
        try:
            submit(session, name, spec(["sh", "-c", f"echo {name}"]))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(name,)) for name in chosen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    for name in chosen:
        wait_for(session, name, "DONE")
        assert logs(session, name) == f"{name}\n"
        run(session, sql.drop_service(name))


@pytest.mark.parametrize("statement", [
    "SELECT 1", "DROP SERVICE IDENTIFIER(%s)", "SHOW JOB SERVICES", "describe service identifier(%s)",
    "SHOW SERVICE CONTAINERS IN SERVICE X; DROP SERVICE Y", 'SHOW SERVICE CONTAINERS IN SERVICE "X"',
    "SHOW SERVICE CONTAINERS IN SERVICE IDENTIFIER(%s)", "SHOW SERVICE CONTAINERS IN SERVICE X--",
])
def test_any_other_statement_is_an_error_naming_it(session: EmulatorSession, statement: str) -> None:
    params: tuple[object, ...] = ("X",) * statement.count("%s")
    with pytest.raises(EmulatorError, match="does not emulate this statement: " + statement[:12]):
        session.execute(statement, params)


def test_binds_must_match_the_markers(session: EmulatorSession) -> None:
    with pytest.raises(EmulatorError, match="1 bind marker\\(s\\) and 2 value\\(s\\)"):
        session.execute(sql.DESCRIBE_SERVICE, ("A", "B"))


@pytest.mark.parametrize("hostile", ["x; DROP SERVICE y", "a b", "1abc", "", "x'--", 'a"b', "a" * 256, "ab.cd"])
def test_a_hostile_identifier_is_refused_not_run(session: EmulatorSession, hostile: str) -> None:
    with pytest.raises(EmulatorError, match="invalid identifier"):
        session.execute(sql.DESCRIBE_SERVICE, (hostile,))


def test_identifiers_resolve_as_snowflake_resolves_them() -> None:
    assert resolve_identifier("jg_abc_t_myjob_1_1") == "JG_ABC_T_MYJOB_1_1"
    assert resolve_identifier('"Mixed Case"') == "Mixed Case"
    assert resolve_identifier('"say ""hi"""') == 'say "hi"'
    with pytest.raises(EmulatorError):
        resolve_identifier(3)


def test_like_patterns_match_as_snowflakes_show_does() -> None:
    assert like("JG\\_AB%").fullmatch("jg_abcd_x_1")
    assert not like("JG\\_AB%").fullmatch("JGXAB")
    assert like("a_c").fullmatch("ABC") and not like("a_c").fullmatch("abbc")
    assert like("(.*)%").fullmatch("(.*)x") and not like("(.*)").fullmatch("abc")


@pytest.mark.parametrize(("document", "message"), [
    ("spec: {containers: []}", "exactly one container"),
    ("spec: {containers: [{name: a, image: i}, {name: b, image: i}]}", "exactly one container"),
    ("spec: {containers: [{name: main, image: i, volumeMounts: []}]}", "spec.containers[0].volumeMounts: not emulated"),
    ("spec: {containers: [{name: main, image: i}], volumes: []}", "spec.volumes: not emulated"),
    ("spec: {containers: [{name: main}]}", "needs an image"),
    ("spec: {containers: [{name: main, image: i, args: [{a: 1}]}]}", "args[0]: must be a string"),
    ("spec: {containers: [{name: main, image: i, resources: {limits: {cpu: lots}}}]}", "limits.cpu: 'lots'"),
    ("[1, 2]", "a single key 'spec'"),
    ("spec: {containers: [", "not YAML"),
])
def test_a_spec_the_emulator_does_not_run_is_refused_naming_the_field(document: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("[", "\\[").replace("]", "\\]")):
        parse_spec(document, {})


def test_a_spec_becomes_its_container_plan() -> None:
    text = spec(["--query=select 1"], image=SEED_IMAGE, command=["python3", "/app/sql.py"], env={"A": 1, "B": True},
                resources={"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": 0.5, "memory": "1G"}})
    plan = parse_spec(text, {SEED_IMAGE: SQL_IMAGE})
    assert (plan.image, plan.spec_image, plan.entrypoint, plan.command) == (
        SQL_IMAGE, SEED_IMAGE, ["python3", "/app/sql.py"], ["--query=select 1"])
    assert (plan.environment, plan.cpu, plan.memory_bytes) == ({"A": "1", "B": "true"}, 0.5, 10**9)
