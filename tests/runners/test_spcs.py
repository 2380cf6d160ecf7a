"""The SPCS runner's state machine against a scripted Snowflake: the test plays SPCS, the runner is driven as the
engine drives it.

`Account` answers exactly the statement texts spcs_statements makes (anything else fails the test), keeps the
services, and records every statement with the thread it ran on. It proves the runner's logic: what it sends,
how often, how each status ends an attempt. That real Snowflake accepts the statements is the live suite's
(test_spcs_live.py) and the statement tests' (test_spcs_statements.py) business; the runner running real
containers is the emulator's suite (test_spcs_emulator.py).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from jobgraph.config.model import Pool
from jobgraph.errors import RunnerError
from jobgraph.runners import spcs as spcs_module
from jobgraph.runners import spcs_reading
from jobgraph.runners import spcs_statements as statements
from jobgraph.runners.base import JobSpec
from jobgraph.runners.spcs import SpcsRunner
from jobgraph.runners.spcs_spec import SpcsSettings, comment_for, service_name
from jobgraph.states import AttemptStatus

T = TypeVar("T")
RUN_ID = "0b5e3c1e-6f1a-4a3e-9a55-1d2f3e4a5b6c"
SECRET = "hunter2-the-real-value"
CREATED = datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC)
IMAGE = "/tutorial_db/data_schema/tutorial_repository/my_job_image:latest"


@dataclass
class Service:
    pool: str
    spec: dict[str, Any]
    comment: str
    status: str = "PENDING"
    message: str = ""
    log: str = ""
    updated_on: datetime | None = None
    exit_code: int | None = None
    """LAST_EXIT_CODE, which SHOW SERVICE CONTAINERS has since bundle 2024_08 (None: an account without it)."""
    placed: bool = False
    """A PENDING service already on a node (its container waiting, e.g. for an image it cannot pull)."""


@dataclass
class Account:
    """What a Snowflake account holds for the runner: compute pools and job services."""

    pools: set[str] = field(default_factory=lambda: {"PR_STD_POOL_XS", "PR_STD_POOL_S"})
    services: dict[str, Service] = field(default_factory=dict)
    sent: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)
    refuse: dict[str, str] = field(default_factory=dict)
    """Statement text prefix -> the Snowflake error it gets."""
    before: dict[str, Callable[[], None]] = field(default_factory=dict)
    """Statement text prefix -> what happens in the account just before it is answered."""

    def statements(self, start: str) -> list[tuple[object, ...]]:
        return [params for sql, params in self.sent if sql.startswith(start)]

    def execute(self, sql: str, params: tuple[object, ...]) -> list[dict[str, object]]:
        self.sent.append((sql, params))
        self.threads.add(threading.get_ident())
        for prefix, happen in list(self.before.items()):
            if sql.startswith(prefix):
                happen()
        for prefix, error in self.refuse.items():
            if sql.startswith(prefix):
                raise RunnerError(f"Snowflake refused {prefix}: {error}")
        if sql == statements.SHOW_COMPUTE_POOLS:
            return [{"name": name, "state": "IDLE", "active_nodes": 1, "max_nodes": 1} for name in sorted(self.pools)]
        if sql.startswith(statements.EXECUTE_JOB_SERVICE):
            pool, name, *rest = params
            assert sql.endswith("FROM SPECIFICATION %s")
            comment = rest[-2] if "COMMENT = %s" in sql else ""
            if name in self.services:
                raise RunnerError(f"Snowflake refused EXECUTE JOB SERVICE: 002002: Object '{name}' already exists.")
            self.services[str(name)] = Service(str(pool), yaml.safe_load(str(rest[-1])), str(comment))
            return [{"status": f"Job {name} submitted."}]
        if sql == statements.SHOW_JOB_SERVICES:
            like = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in str(params[0]))
            return [{"name": name, "status": service.status, "compute_pool": service.pool,
                     "comment": service.comment, "created_on": CREATED, "updated_on": service.updated_on}
                    for name, service in self.services.items() if re.fullmatch(like, name, re.IGNORECASE)]
        if sql == statements.DESCRIBE_SERVICE:
            service = self.services.get(str(params[0]))
            if service is None:
                raise RunnerError(f"Snowflake refused DESCRIBE SERVICE: 002003: Service '{params[0]}' does not exist "
                                  "or not authorized.")
            return [{"name": params[0], "status": service.status, "compute_pool": service.pool}]
        if sql.startswith(statements.SHOW_SERVICE_CONTAINERS):
            name = statements.service_name_of(statements.Statement(sql, params))
            assert name is not None and params == ()
            service = self.services[name]
            if service.status in ("PENDING", "SUSPENDED") and not service.placed:  # as documented: no instance
                return [{"service_name": name, "service_status": service.status, "instance_id": None,
                         "container_name": None, "status": None, "message": None}]
            row: dict[str, object] = {"service_name": name, "instance_id": "0", "container_name": "main",
                                      "status": service.status, "message": service.message}
            if service.exit_code is not None:
                row["last_exit_code"] = service.exit_code
            return [row]
        if sql == statements.SERVICE_LOGS:
            name, instance, container, lines = params
            assert (instance, container) == ("0", "main") and isinstance(lines, int)
            text = "\n".join(self.services[str(name)].log.splitlines()[-lines:])
            return [{f"system$get_service_logs('{name}', '0', 'main', {lines})": text}]
        if sql == statements.DROP_SERVICE:
            self.services.pop(str(params[0]), None)
            return [{"status": "dropped"}]
        raise AssertionError(f"a statement the runner should not send: {sql}")


class Session:
    def __init__(self, account: Account) -> None:
        self.account = account
        self.closed = False

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[dict[str, object]]:
        return self.account.execute(sql, params)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch) -> Account:
    account = Account()
    monkeypatch.setattr(spcs_module, "connect", lambda settings, images, pools, folder: Session(account))
    return account


def make_spec(tmp_path: Path, task: str = "t_myjob_1", attempt: int = 1, **fields: Any) -> JobSpec:
    return JobSpec(RUN_ID, "root_task", task, attempt, IMAGE,
                   ("--query=select 1", f"--result_table=results_{task[-1]}"), {"JOBGRAPH_TASK": task},
                   tmp_path / "logs" / task / f"attempt-{attempt}.log", pool=fields.pop("pool", "PR_STD_POOL_XS"),
                   **fields)


def runner_for(needed: dict[str, list[str]] | None = None, **settings: Any) -> SpcsRunner:
    pools = {"PR_STD_POOL_XS": Pool(max_parallel=1, instance_family="CPU_X64_XS"),
             "PR_STD_POOL_S": Pool(max_parallel=2, instance_family="CPU_X64_S")}
    return SpcsRunner(SpcsSettings(**{"poll_secs": 0.05, **settings}), pools,
                      needed if needed is not None else {"PR_STD_POOL_XS": ["t_myjob_1"]})


def play(scenario: Callable[[SpcsRunner], Awaitable[T]], runner: SpcsRunner | None = None, opened: bool = True) -> T:
    async def main() -> T:
        chosen = runner or runner_for()
        try:
            if opened:
                await chosen.open()
            return await asyncio.wait_for(scenario(chosen), 30)
        finally:
            await chosen.aclose()

    return asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_a_done_job_service_is_done_with_its_exit_code_its_log_read_and_dropped(account: Account,
                                                                               tmp_path: Path) -> None:
    spec = make_spec(tmp_path, secret_values=frozenset({SECRET}))

    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(spec)
        service = account.services[runner.handle_ref(handle)]
        service.status = "RUNNING"
        await until(lambda: len(account.statements(statements.SHOW_JOB_SERVICES)) >= 2)
        service.log = f"2026-01-01T00:00:00Z loading\n2026-01-01T00:00:01Z password {SECRET}\nloaded 42 rows\n"
        service.status, service.exit_code = "DONE", 0
        return handle, service, await runner.wait(handle), await runner.read_return_value(handle, 100)

    handle, service, outcome, value = play(scenario)
    assert (outcome.status, outcome.exit_code, outcome.error) == (AttemptStatus.DONE, 0, None)
    assert value is None
    assert handle.name == service_name(spec) == "JG_0B5E3C1E_T_MYJOB_1_1"
    assert service.pool == "PR_STD_POOL_XS" and service.comment == comment_for(spec)
    assert service.spec["spec"]["containers"][0]["args"] == ["--query=select 1", "--result_table=results_1"]
    assert spec.log_path.read_text() == ("2026-01-01T00:00:00Z loading\n2026-01-01T00:00:01Z password ***\n"
                                         "loaded 42 rows\n")
    assert handle.name not in account.services  # a DONE service is dropped once read
    assert account.statements(statements.DROP_SERVICE) == [(handle.name,)]
    assert threading.main_thread().ident not in account.threads  # never a statement on the event loop's thread


def test_a_failed_job_service_is_failed_with_the_containers_message_and_exit_code(account: Account,
                                                                                  tmp_path: Path) -> None:
    spec = make_spec(tmp_path)

    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(spec)
        service = account.services[handle.name]
        service.log = "Traceback (most recent call last):\nValueError: table results_1 is locked\n"
        service.status, service.message, service.exit_code = "FAILED", "Container exited with code 1", 1
        return handle, await runner.wait(handle)

    handle, outcome = play(scenario)
    assert (outcome.status, outcome.exit_code) == (AttemptStatus.FAILED, 1)
    assert outcome.error == f"job service {handle.name} FAILED: main FAILED: Container exited with code 1"
    assert "ValueError: table results_1 is locked" in spec.log_path.read_text()
    assert handle.name not in account.services  # read, recorded, dropped
    assert account.statements(statements.DROP_SERVICE) == [(handle.name,)]


def test_an_account_without_last_exit_code_records_none_never_a_made_up_one(account: Account,
                                                                           tmp_path: Path) -> None:
    async def scenario(runner: SpcsRunner) -> Any:
        done = await runner.start(make_spec(tmp_path, "t_myjob_1"))
        failed = await runner.start(make_spec(tmp_path, "t_myjob_2"))
        account.services[done.name].status = "DONE"
        account.services[failed.name].status, account.services[failed.name].message = "FAILED", "exit 1"
        return await runner.wait(done), await runner.wait(failed)

    done, failed = play(scenario)
    assert (done.status, done.exit_code) == (AttemptStatus.DONE, None)
    assert (failed.status, failed.exit_code) == (AttemptStatus.FAILED, None)


@pytest.mark.parametrize(("status", "expected", "words"), [
    ("INTERNAL_ERROR", AttemptStatus.ERROR, "Snowflake reported INTERNAL_ERROR"),
    ("SUSPENDED", AttemptStatus.ERROR, "compute pool PR_STD_POOL_XS was suspended"),
    ("CANCELLED", AttemptStatus.ERROR, "was cancelled by someone else, not by jobgraph"),
    ("DELETED", AttemptStatus.ERROR, "was dropped by someone else, not by jobgraph"),
])
def test_every_other_end_is_mapped_truly(account: Account, tmp_path: Path, status: str, expected: AttemptStatus,
                                         words: str) -> None:
    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(make_spec(tmp_path))
        account.services[handle.name].status = status
        return await runner.wait(handle)

    outcome = play(scenario)
    assert outcome.status == expected and outcome.exit_code is None
    assert words in str(outcome.error)
    assert all(params[1] == "0" for params in account.statements(statements.SERVICE_LOGS))  # never 'None'
    if status == "SUSPENDED":  # it never got a node: nothing to read a log from, and the error says so
        assert not account.statements(statements.SERVICE_LOGS)
        assert "its log could not be read: Snowflake listed no container" in str(outcome.error)


def test_a_service_dropped_behind_jobgraphs_back_is_an_error_naming_it(account: Account, tmp_path: Path) -> None:
    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(make_spec(tmp_path))
        account.services[handle.name].status = "RUNNING"
        await until(lambda: len(account.statements(statements.SHOW_JOB_SERVICES)) >= 1)
        del account.services[handle.name]
        return handle, await runner.wait(handle)

    handle, outcome = play(scenario)
    assert outcome.status == AttemptStatus.ERROR
    assert outcome.error == (f"job service {handle.name} was dropped by someone else, not by jobgraph (status "
                             "DELETED)")
    assert account.statements(statements.DESCRIBE_SERVICE) == [(handle.name,)]  # looked up once more first


def test_one_show_per_poll_whatever_the_number_of_jobs(account: Account, tmp_path: Path) -> None:
    specs = [make_spec(tmp_path, f"t_myjob_{n}") for n in range(1, 7)]

    async def scenario(runner: SpcsRunner) -> Any:
        handles = [await runner.start(spec) for spec in specs]
        for handle in handles:
            account.services[handle.name].status = "RUNNING"
        await until(lambda: runner.polls >= 5)
        for handle in handles:
            account.services[handle.name].status = "DONE"
        outcomes = [await runner.wait(handle) for handle in handles]
        return outcomes, runner.polls

    outcomes, polls = play(scenario)
    assert [outcome.status for outcome in outcomes] == [AttemptStatus.DONE] * 6
    shows = account.statements(statements.SHOW_JOB_SERVICES)
    assert len(shows) == polls
    assert set(shows) == {("JG_0B5E3C1E_%",)}
    assert not account.statements(statements.DESCRIBE_SERVICE)


def test_cancel_drops_the_service(account: Account, tmp_path: Path) -> None:
    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(make_spec(tmp_path))
        account.services[handle.name].status = "RUNNING"
        await runner.cancel(handle)
        return handle, await runner.wait(handle)

    handle, outcome = play(scenario)
    assert outcome.status == AttemptStatus.CANCELLED
    assert outcome.error == f"cancelled by jobgraph (DROP SERVICE {handle.name})"
    assert handle.name not in account.services


def test_cancel_of_a_service_that_already_ended_keeps_its_real_end(account: Account, tmp_path: Path) -> None:
    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(make_spec(tmp_path))
        account.services[handle.name].status = "FAILED"
        account.services[handle.name].message = "exit 3"
        await runner.cancel(handle)
        return handle, await runner.wait(handle)

    handle, outcome = play(scenario, runner_for(poll_secs=60))
    assert outcome.status == AttemptStatus.FAILED and "exit 3" in str(outcome.error)
    assert handle.name not in account.services


def test_adopt_after_a_restart_by_the_recorded_name(account: Account, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "t_myjob_3", 2)

    async def first(runner: SpcsRunner) -> str:
        handle = await runner.start(spec)
        account.services[handle.name].status = "RUNNING"
        return runner.handle_ref(handle)

    reference = play(first)
    assert account.services[reference].status == "RUNNING"  # closing the runner left the service running

    async def second(runner: SpcsRunner) -> Any:
        with pytest.raises(RunnerError, match="is not the job service of t_myjob_3 attempt 2"):
            await runner.adopt("JG_0B5E3C1E_T_MYJOB_3_1", spec)
        handle = await runner.adopt(reference, spec)
        account.services[reference].status = "DONE"
        return await runner.wait(handle)

    assert play(second, opened=False).status == AttemptStatus.DONE
    assert len(account.statements(statements.EXECUTE_JOB_SERVICE)) == 1


def test_find_and_a_lost_answer_take_only_this_attempts_service(account: Account, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    name = service_name(spec)

    async def scenario(runner: SpcsRunner) -> Any:
        found_before = await runner.find(spec)
        account.services[name] = Service("PR_STD_POOL_XS", {}, comment_for(spec), "RUNNING")
        found = await runner.find(spec)
        handle = await runner.start(spec)  # "already exists", and it is this attempt's: taken
        account.services[name].comment = "someone else's"
        with pytest.raises(RunnerError, match="already exists"):
            await runner.start(spec)
        await runner.cancel(handle)
        return found_before, found

    assert play(scenario) == (None, name)


def test_open_refuses_compute_pools_that_do_not_exist(account: Account) -> None:
    runner = runner_for({"PR_STD_POOL_XS": ["t_myjob_1"], "PR_GPU_POOL": ["t_myjob_2", "t_myjob_3"]})
    with pytest.raises(RunnerError) as caught:
        play(lambda r: asyncio.sleep(0), runner)
    assert str(caught.value) == ("compute pool PR_GPU_POOL (pool of job t_myjob_2, t_myjob_3) does not exist in "
                                 "Snowflake; the compute pools there: PR_STD_POOL_S, PR_STD_POOL_XS (create it "
                                 "with CREATE COMPUTE POOL, or fix the job's pool)")
    assert not account.statements(statements.EXECUTE_JOB_SERVICE)


def test_a_refused_submit_is_a_runner_error_with_snowflakes_reason(account: Account, tmp_path: Path) -> None:
    account.refuse[statements.EXECUTE_JOB_SERVICE] = "003001: Insufficient privileges to operate on compute pool"

    async def scenario(runner: SpcsRunner) -> None:
        await runner.start(make_spec(tmp_path))

    with pytest.raises(RunnerError, match="Insufficient privileges"):
        play(scenario)
    assert not account.services


def test_snowflake_unreachable_for_long_ends_the_attempts_as_errors(account: Account, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spcs_module, "UNREACHABLE_SECS", 0.2)

    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(make_spec(tmp_path))
        account.refuse[statements.SHOW_JOB_SERVICES] = "390114: Authentication token has expired"
        return handle, await runner.wait(handle)

    handle, outcome = play(scenario)
    assert outcome.status == AttemptStatus.ERROR
    assert "Authentication token has expired" in str(outcome.error) and handle.name in str(outcome.error)
    assert handle.name in account.services  # it may run on: nothing was dropped


def test_logs_while_running_and_after(account: Account, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, secret_values=frozenset({SECRET}))

    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(spec)
        account.services[handle.name].status = "RUNNING"
        account.services[handle.name].log = f"step 1 {SECRET}\n"
        running = await runner.logs(handle, 1000)
        account.services[handle.name].status = "DONE"
        await runner.wait(handle)
        return running, await runner.logs(handle, 1000)

    running, ended = play(scenario)
    assert running == "step 1 ***" and ended == "step 1 ***\n"


def test_an_adopted_service_found_ended_keeps_its_real_end_one_seen_running_ends_now(account: Account,
                                                                                   tmp_path: Path) -> None:
    ended_early, seen_running = make_spec(tmp_path, "t_myjob_1"), make_spec(tmp_path, "t_myjob_2")
    end = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    async def first(runner: SpcsRunner) -> list[str]:
        return [runner.handle_ref(await runner.start(spec)) for spec in (ended_early, seen_running)]

    early, running = play(first)
    account.services[early].status, account.services[early].updated_on = "DONE", end  # while no jobgraph watched
    account.services[running].status, account.services[running].updated_on = "RUNNING", CREATED

    async def second(runner: SpcsRunner) -> Any:
        first_handle = await runner.adopt(early, ended_early)
        second_handle = await runner.adopt(running, seen_running)
        done_early = await runner.wait(first_handle)
        await until(lambda: not second_handle.adopted)
        account.services[running].status, account.services[running].updated_on = "DONE", end
        return done_early, await runner.wait(second_handle)

    done_early, done_later = play(second, opened=False)
    assert done_early.ended_at == end
    assert done_later.ended_at is None  # the engine records "now": it was seen running a poll ago


def test_a_service_pending_past_the_limit_is_an_error_with_the_containers_message_and_dropped(
        account: Account, tmp_path: Path) -> None:
    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(make_spec(tmp_path))
        service = account.services[handle.name]
        service.placed, service.message = True, "Failed to pull image: repository my_job_image not found"
        started = asyncio.get_running_loop().time()
        outcome = await runner.wait(handle)
        return handle, outcome, asyncio.get_running_loop().time() - started

    handle, outcome, waited = play(scenario, runner_for(pending_limit_secs=0.3))
    assert (outcome.status, outcome.exit_code) == (AttemptStatus.ERROR, None)
    assert outcome.error == (f"job service {handle.name} stayed PENDING for 0.3s (runners.spcs.pending_limit_secs): "
                             "main PENDING: Failed to pull image: repository my_job_image not found; dropped it "
                             f"(DROP SERVICE {handle.name})")
    assert 0.3 <= waited < 5
    assert handle.name not in account.services
    assert account.statements(statements.DESCRIBE_SERVICE) == [(handle.name,)]  # still PENDING, looked at once more


def test_a_service_that_never_got_a_node_is_an_error_naming_its_pools_state(account: Account, tmp_path: Path) -> None:
    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(make_spec(tmp_path))
        return handle, await runner.wait(handle)

    handle, outcome = play(scenario, runner_for(pending_limit_secs=0.2))
    assert outcome.status == AttemptStatus.ERROR
    assert ": SPCS has placed it on no node yet (compute pool PR_STD_POOL_XS is IDLE, 1 of 1 nodes active); " \
           "dropped it" in str(outcome.error)
    assert handle.name not in account.services and not spec_log(tmp_path).exists()


def spec_log(tmp_path: Path) -> Path:
    return make_spec(tmp_path).log_path


def test_pending_within_the_limit_or_starting_as_jobgraph_gives_up_is_followed_to_its_end(
        account: Account, tmp_path: Path) -> None:
    """The limit counts while the service is PENDING; one that starts between the poll and the drop is not dropped."""
    async def scenario(runner: SpcsRunner) -> Any:
        quick = await runner.start(make_spec(tmp_path, "t_myjob_1"))
        late = await runner.start(make_spec(tmp_path, "t_myjob_2"))
        await asyncio.sleep(0.2)  # PENDING for less than the limit
        account.services[quick.name].status = "RUNNING"

        def starts() -> None:  # SPCS places it on a node just as jobgraph looks once more before dropping it
            account.services[late.name].status = "RUNNING"
            account.before.pop(statements.DESCRIBE_SERVICE)

        account.before[statements.DESCRIBE_SERVICE] = starts
        await until(lambda: account.services[late.name].status == "RUNNING")
        await asyncio.sleep(0.6)  # RUNNING past the limit: nothing to do with it
        for handle in (quick, late):
            account.services[handle.name].status, account.services[handle.name].log = "DONE", "ran\n"
        return await runner.wait(quick), await runner.wait(late)

    quick, late = play(scenario, runner_for(pending_limit_secs=0.4))
    assert (quick.status, late.status) == (AttemptStatus.DONE, AttemptStatus.DONE)
    assert len(account.statements(statements.DROP_SERVICE)) == 2  # each once, when it was done


def test_cancel_reads_what_the_service_printed_before_dropping_it(account: Account, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, secret_values=frozenset({SECRET}))

    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(spec)
        account.services[handle.name].status = "RUNNING"
        account.services[handle.name].log = f"step 1\nconnecting with {SECRET}\n"
        await runner.cancel(handle)
        return handle, await runner.wait(handle)

    handle, outcome = play(scenario, runner_for(poll_secs=60))
    assert outcome.status == AttemptStatus.CANCELLED
    assert spec.log_path.read_text() == "step 1\nconnecting with ***\n"
    sent = [sql for sql, _ in account.sent]
    assert sent.index(statements.SERVICE_LOGS) < sent.index(statements.DROP_SERVICE)
    assert handle.name not in account.services


@pytest.mark.parametrize("trouble", ["log refused", "describe refused", "log hangs"])
def test_a_log_that_cannot_be_read_never_holds_the_drop_back(account: Account, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, trouble: str) -> None:
    monkeypatch.setattr(spcs_reading, "BEFORE_DROP_SECS", 0.5)
    released = threading.Event()
    if trouble == "log refused":
        account.refuse[statements.SERVICE_LOGS] = "000603: Internal error"
    elif trouble == "describe refused":
        account.refuse[statements.DESCRIBE_SERVICE] = "390114: Authentication token has expired"
    else:
        account.before[statements.SERVICE_LOGS] = lambda: released.wait(30)
    spec = make_spec(tmp_path)

    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(spec)
        account.services[handle.name].status = "RUNNING"
        loop = asyncio.get_running_loop()
        began = loop.time()
        await runner.cancel(handle)
        took = loop.time() - began
        released.set()
        return handle, await runner.wait(handle), took

    try:
        handle, outcome, took = play(scenario, runner_for(poll_secs=60))
    finally:
        released.set()
    assert outcome.status == AttemptStatus.CANCELLED and handle.name not in account.services
    assert took < 3, took
    assert not spec.log_path.exists()
