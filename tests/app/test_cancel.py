"""Cancel through the store: the request lands once and only on a running attempt, the owner's watch cancels the
run as Ctrl-C does, a store fault does not stop the watch, and a run whose owner died is closed by recovery."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from jobgraph.app.cancel import cancel_run, wait_ended, watch_cancels, watched
from jobgraph.config import Pipeline
from jobgraph.config.validate import check_pipeline
from jobgraph.engine import RunEnded
from jobgraph.engine.run import GraphRun
from jobgraph.errors import StoreError
from jobgraph.runners.local import LocalRunner
from jobgraph.states import RunState
from jobgraph.store import RunRecord, Store
from jobgraph.store.faults import StoreFault
from tests.conftest import process_alive


def graph_run(tmp_path: Path, store: Store, jobs: list[dict[str, object]]) -> GraphRun:
    """A run of `jobs` (shell scripts) by local processes, recorded in `store`."""
    pipeline = check_pipeline(Pipeline.model_validate(
        {"name": "p", "images": {"sh": ["sh", "-c"]}, "jobs": jobs}), "test")
    runner = LocalRunner(pipeline.images, cwd=tmp_path)
    return GraphRun(pipeline, lambda _job: runner, [store], tmp_path / "logs")


def finished_run(tmp_path: Path, store: Store) -> RunRecord:
    """A run that has ended SUCCEEDED."""
    result = asyncio.run(graph_run(tmp_path, store, [{"name": "quick", "image": "sh", "args": ["true"]}]).run())
    return store.run(result.run_id)


def running_run(tmp_path: Path, store: Store) -> RunRecord:
    """A RUNNING run owned by this (live) process: a finished run claimed for its next attempt, as a retry does."""
    return store.claim_run(finished_run(tmp_path, store))


class FakeRun:
    """What the watch needs of a GraphRun: its id, and a cancel that counts its calls."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.cancels = 0

    def cancel(self) -> None:
        self.cancels += 1


def test_a_request_from_another_process_cancels_the_run_as_ctrl_c_does(tmp_path: Path, any_store_url: str) -> None:
    owner, other = Store(any_store_url), Store(any_store_url)
    pids = tmp_path / "pids"
    run = graph_run(tmp_path, owner, [{"name": "slow", "image": "sh", "args": [f"echo $$ >> {pids}; sleep 300"]},
                                      {"name": "after", "image": "sh", "args": ["true"], "after": ["slow"]}])
    said: list[str] = []
    warned: list[str] = []

    async def scenario() -> tuple[RunState, float]:
        running = asyncio.create_task(watched(owner, run, said.append, warned.append))
        deadline = time.monotonic() + 60
        while not pids.exists() or not other.attempts(run.run_id):
            assert time.monotonic() < deadline, "the job never started"
            await asyncio.sleep(0.05)
        asked = time.monotonic()
        assert other.request_cancel(run.run_id[:8], "alice").cancel_requested_by == "alice"
        result = await asyncio.wait_for(running, 60)
        return result.state, time.monotonic() - asked

    state, took = asyncio.run(scenario())
    assert state == RunState.CANCELLED
    assert took < 10, f"the owner took {took:.2f}s to end the run"
    assert said == [f"run {run.run_id}: cancel requested by alice; cancelling it"] and warned == []
    assert not process_alive(int(pids.read_text()))
    stored = other.run(run.run_id)
    assert (stored.state, stored.cancel_requested_by) == ("CANCELLED", "alice")
    assert {t.task: t.state for t in other.tasks(run.run_id)} == {"slow": "CANCELLED", "after": "CANCELLED"}
    assert [(a.task, a.status) for a in other.attempts(run.run_id)] == [("slow", "CANCELLED")]
    print(f"from the request to the run's end: {took:.2f}s")
    owner.close()
    other.close()


def test_a_request_lands_once_only_on_a_running_attempt_and_a_retry_clears_it(
        tmp_path: Path, any_store_url: str) -> None:
    store = Store(any_store_url)
    ended = finished_run(tmp_path, store)
    with pytest.raises(StoreError, match=f"run {ended.run_id} of p has already ended: SUCCEEDED at .*; "
                                         "nothing was cancelled"):
        store.request_cancel(ended.run_id, "alice")
    assert store.run(ended.run_id) == ended
    assert store.cancel_requests([ended.run_id]) == {}

    claimed = store.claim_run(ended)
    first = store.request_cancel(ended.run_id[:6], "alice")
    assert (first.state, first.run_attempt, first.cancel_requested_by) == ("RUNNING", 2, "alice")
    assert first.cancel_requested_at is not None and first.cancel_requested_at <= datetime.now(UTC)
    second = store.request_cancel(ended.run_id, "bob")
    assert (second.cancel_requested_by, second.cancel_requested_at) == ("alice", first.cancel_requested_at)
    assert store.cancel_requests([ended.run_id, "no-such-run"]) == {ended.run_id: "alice"}
    assert store._full().cancel_requests([ended.run_id]) == {ended.run_id: "alice"}  # both ways of reading agree

    assert store.release_claim(claimed, ended)  # a retry that stopped before it ran gives the run back as it was
    assert store.run(ended.run_id) == ended and store.cancel_requests([ended.run_id]) == {}

    store.claim_run(ended)
    store.request_cancel(ended.run_id, "alice")
    store.record(RunEnded(ended.run_id, RunState.CANCELLED, datetime.now(UTC)))
    assert store.cancel_requests([ended.run_id]) == {}  # the owner's poll sees only running runs
    assert store.run(ended.run_id).cancel_requested_by == "alice"
    retried = store.claim_run(store.run(ended.run_id))
    assert (retried.run_attempt, retried.cancel_requested_at, retried.cancel_requested_by) == (3, None, None)
    assert store.run(ended.run_id) == retried  # the request was for the attempt that ended
    store.close()


def test_a_store_fault_while_polling_is_said_once_and_the_watch_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    run = running_run(tmp_path, store)
    store.request_cancel(run.run_id, "alice")
    fake, idle = FakeRun(run.run_id), FakeRun("a-run-nobody-asked-to-cancel")
    polls = {"count": 0}
    read = store.cancel_requests

    def failing_three_times(run_ids: list[str]) -> dict[str, str]:
        polls["count"] += 1
        if polls["count"] <= 3:
            raise StoreFault("the store sqlite:///x is down", transient=True)
        return read(run_ids)

    monkeypatch.setattr(store, "cancel_requests", failing_three_times)
    said: list[str] = []
    warned: list[str] = []

    async def scenario() -> None:
        watch = asyncio.create_task(watch_cancels(store, lambda: [fake, idle], said.append, warned.append,
                                                  poll_secs=0.01))
        deadline = time.monotonic() + 30
        while polls["count"] < 8:
            assert time.monotonic() < deadline and not watch.done()
            await asyncio.sleep(0.01)
        watch.cancel()

    asyncio.run(scenario())
    assert warned == ["cannot read cancel requests from the store (the store sqlite:///x is down); trying again "
                      "every 0.01s"]
    assert said == [f"run {run.run_id}: cancel requested by alice; cancelling it"]
    assert (fake.cancels, idle.cancels) == (1, 0)  # told once, however many polls follow
    store.close()


def test_waiting_for_an_owner_that_does_not_answer_ends_at_its_bound(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    run = cancel_run(store, running_run(tmp_path, store).run_id, "alice")
    assert run.state == RunState.RUNNING  # its owner (this process) is alive: it is asked, not closed
    started = time.monotonic()
    still = wait_ended(store, run.run_id, timeout=0.5)
    assert still.state == RunState.RUNNING and 0.5 <= time.monotonic() - started < 10
    store.close()


def test_a_run_whose_owner_died_is_closed_by_recovery(tmp_path: Path, any_store_url: str) -> None:
    store = Store(any_store_url)
    run = running_run(tmp_path, store)
    dead = f"{socket.gethostname()}:{os.getpid()}:not-this-process"
    engine = create_engine(any_store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE runs SET owner = :owner WHERE run_id = :run"), {"owner": dead, "run": run.run_id})
    engine.dispose()
    said: list[str] = []
    closed = cancel_run(store, run.run_id, "alice", folder=tmp_path, say=said.append)
    assert (closed.state, closed.cancel_requested_by) == ("CANCELLED", "alice")
    assert closed.finished_at is not None and closed.owner == store.owner
    assert said == [f"run {run.run_id}: its jobgraph process ({dead}) had died, so it was closed here: killed 0 "
                    "leftover process(es)"]
    with pytest.raises(StoreError, match=r"has already ended: CANCELLED .*cancel requested by alice"):
        cancel_run(store, run.run_id, "bob")
    store.close()
