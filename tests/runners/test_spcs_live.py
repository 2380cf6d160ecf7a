"""The SPCS runner on a real Snowflake account: runs only when Snowflake credentials are set.

No Snowflake account can be reached from the machines this project is built on, so here these tests are
skipped, with the reason printed (`-ra`). With an account whose role may create job services in a compute
pool (and read their logs), and an image in one of its image repositories that has a shell:

    SNOWFLAKE_ACCOUNT=myorg-myacct SNOWFLAKE_USER=me SNOWFLAKE_PRIVATE_KEY_FILE=~/.snowflake/rsa_key.p8 \\
    SNOWFLAKE_ROLE=spcs_role SNOWFLAKE_DATABASE=tutorial_db SNOWFLAKE_SCHEMA=data_schema \\
    JOBGRAPH_SPCS_LIVE_POOL=PR_STD_POOL_XS \\
    JOBGRAPH_SPCS_LIVE_IMAGE=/tutorial_db/data_schema/tutorial_repository/busybox:latest \\
    pytest tests/runners/test_spcs_live.py

(or `JOBGRAPH_SPCS_LIVE_CONNECTION=<a connections.toml name>` instead of the SNOWFLAKE_* variables). The image
runs the job's args as its command (`sh -c ...`): one without an ENTRYPOINT, such as busybox. What these
prove that nothing else here can: that Snowflake accepts every statement the runner sends, as sent (binds,
IDENTIFIER(), the unquoted SHOW SERVICE CONTAINERS, clause order), and that its statuses, columns and logs
are what the runner reads.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobgraph.config.model import Pool
from jobgraph.errors import RunnerError
from jobgraph.runners.base import JobSpec
from jobgraph.runners.spcs import SpcsRunner
from jobgraph.runners.spcs_session import connect
from jobgraph.runners.spcs_spec import SpcsSettings
from jobgraph.runners.spcs_statements import show_compute_pools, show_job_services
from jobgraph.states import AttemptStatus

T = TypeVar("T")


@pytest.fixture
def live() -> tuple[SpcsSettings, str, str]:
    """(settings, compute pool, image) of the account the environment names; skipped, saying why, if none."""
    connection = os.environ.get("JOBGRAPH_SPCS_LIVE_CONNECTION")
    if not connection and not os.environ.get("SNOWFLAKE_ACCOUNT"):
        pytest.skip("no Snowflake credentials (SNOWFLAKE_ACCOUNT or JOBGRAPH_SPCS_LIVE_CONNECTION is not set): no "
                    "account can be reached from this project's build machines; the runner is tested against a "
                    "scripted account (test_spcs.py) and the local SPCS emulator (test_spcs_emulator.py, "
                    "tests/cli/test_spcs.py)")
    pool, image = os.environ.get("JOBGRAPH_SPCS_LIVE_POOL"), os.environ.get("JOBGRAPH_SPCS_LIVE_IMAGE")
    if not pool or not image:
        pytest.skip("Snowflake credentials are set, but JOBGRAPH_SPCS_LIVE_POOL (a compute pool) or "
                    "JOBGRAPH_SPCS_LIVE_IMAGE (an image with a shell in an image repository) is not")
    return SpcsSettings(connection=connection or None, poll_secs=5, log_lines=100), pool, image


def make_spec(tmp_path: Path, pool: str, image: str, script: str, task: str = "live") -> JobSpec:
    run_id = str(uuid.uuid4())
    return JobSpec(run_id, "jobgraph_live", task, 1, image, ("sh", "-c", script),
                   {"JOBGRAPH_RUN_ID": run_id, "GREETING": "it's a \"live\" $$ test"},
                   tmp_path / task / "attempt-1.log", pool=pool)


def play(settings: SpcsSettings, pool: str, scenario: Callable[[SpcsRunner], Awaitable[T]]) -> T:
    async def main() -> T:
        runner = SpcsRunner(settings, {pool: Pool(max_parallel=1)}, {pool: ["live"]})
        try:
            await runner.open()
            return await asyncio.wait_for(scenario(runner), 1200)
        finally:
            await runner.aclose()

    return asyncio.run(main())


def test_the_pools_are_listed_with_the_columns_the_runner_reads(live: tuple[SpcsSettings, str, str]) -> None:
    settings, pool, _ = live
    session = connect(settings)
    try:
        rows = session.execute(show_compute_pools().sql)
    finally:
        session.close()
    assert pool.upper() in {str(row["name"]).upper() for row in rows}
    assert all("state" in row for row in rows)


def test_a_job_service_runs_to_done_with_its_log_and_is_dropped(live: tuple[SpcsSettings, str, str],
                                                                tmp_path: Path) -> None:
    settings, pool, image = live
    spec = make_spec(tmp_path, pool, image, 'echo "jobgraph live: $GREETING"')

    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(spec)
        outcome = await runner.wait(handle)
        return outcome, await asyncio.to_thread(_listed, settings, handle.name)

    outcome, left = play(settings, pool, scenario)
    assert outcome.status == AttemptStatus.DONE, outcome.error
    assert outcome.exit_code in (0, None)  # None where the account has no LAST_EXIT_CODE column
    assert "jobgraph live: it's a \"live\" $$ test" in spec.log_path.read_text()
    assert left == []


def test_a_failing_job_service_is_failed_with_snowflakes_message(live: tuple[SpcsSettings, str, str],
                                                                 tmp_path: Path) -> None:
    settings, pool, image = live
    spec = make_spec(tmp_path, pool, image, "echo about to fail; exit 3")

    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(spec)
        return handle, await runner.wait(handle)

    handle, outcome = play(settings, pool, scenario)
    assert outcome.status == AttemptStatus.FAILED
    assert outcome.exit_code in (3, None)
    assert handle.name in str(outcome.error)
    assert "about to fail" in spec.log_path.read_text()


def test_cancel_drops_a_running_job_service(live: tuple[SpcsSettings, str, str], tmp_path: Path) -> None:
    settings, pool, image = live
    spec = make_spec(tmp_path, pool, image, "sleep 600")

    async def scenario(runner: SpcsRunner) -> Any:
        handle = await runner.start(spec)
        await runner.cancel(handle)
        return await runner.wait(handle), await asyncio.to_thread(_listed, settings, handle.name)

    outcome, left = play(settings, pool, scenario)
    assert outcome.status == AttemptStatus.CANCELLED
    assert left == []


def test_a_compute_pool_that_does_not_exist_is_refused(live: tuple[SpcsSettings, str, str]) -> None:
    settings, _, _ = live
    missing = f"JG_NO_SUCH_POOL_{uuid.uuid4().hex[:8].upper()}"
    with pytest.raises(RunnerError, match=f"compute pool {missing} .* does not exist in Snowflake"):
        play(settings, missing, lambda runner: asyncio.sleep(0))


def _listed(settings: SpcsSettings, name: str) -> list[dict[str, object]]:
    session = connect(settings)
    try:
        statement = show_job_services(name)
        return session.execute(statement.sql, statement.params)
    finally:
        session.close()
