"""One graph run with real processes: order, pools, skips, retries, timeouts, cancel, finalizer, values."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from jobgraph.config import Pipeline
from jobgraph.config.validate import check_pipeline
from jobgraph.engine import AttemptEnded, AttemptStarted, Event, RetryWaiting, RunEnded, TaskChanged
from jobgraph.engine.run import GraphRun, PriorTask, RunResult
from jobgraph.runners.cgroups import cgroup_base
from jobgraph.runners.local import LocalRunner
from jobgraph.states import AttemptStatus, RunState, TaskState
from jobgraph.store import Store
from tests.conftest import WritePipeline, process_alive, sh, store_url


def make(jobs: list[dict[str, Any]], **fields: Any) -> Pipeline:
    document = {"name": "p", "images": {"sh": ["sh", "-c"]}, "jobs": jobs, **fields}
    return check_pipeline(Pipeline.model_validate(document), "test")


def closing(runner: LocalRunner, run: Coroutine[Any, Any, RunResult]) -> RunResult:
    """Run a graph, then close its runner as `jobgraph run` does."""

    async def main() -> RunResult:
        try:
            return await run
        finally:
            await runner.aclose()

    return asyncio.run(main())


def execute(pipeline: Pipeline, tmp_path: Path, **kwargs: Any) -> tuple[RunResult, list[Event]]:
    events: list[Event] = []
    runner = LocalRunner(pipeline.images, cwd=tmp_path, kill_grace=1.0)
    graph_run = GraphRun(pipeline, lambda _job: runner, [events.append], tmp_path / "logs", **kwargs)
    return closing(runner, graph_run.run()), events


def states(events: list[Event], task: str) -> list[str]:
    return [e.state for e in events if isinstance(e, TaskChanged) and e.task == task]


def test_jobs_run_after_their_predecessors(tmp_path: Path) -> None:
    order = tmp_path / "order"
    pipeline = make([sh(n, f"echo {n} >> {order}", after=a) for n, a in
                     [("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])]])
    result, _ = execute(pipeline, tmp_path)
    lines = order.read_text().split()
    assert result.state == RunState.SUCCEEDED
    assert lines[0] == "a" and lines[-1] == "d" and sorted(lines[1:3]) == ["b", "c"]


def test_a_pool_caps_how_many_jobs_run_at_once(tmp_path: Path) -> None:
    log = tmp_path / "spans"
    script = f"echo start $(date +%s%N) >> {log}; sleep 0.3; echo end $(date +%s%N) >> {log}"
    pipeline = make([sh(f"j{i}", script, pool="two") for i in range(5)], pools={"two": {"max_parallel": 2}})
    execute(pipeline, tmp_path)
    running, peak = 0, 0
    for _, kind in sorted((int(t), k) for k, t in (line.split() for line in log.read_text().splitlines())):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def test_longest_remaining_path_starts_first(tmp_path: Path) -> None:
    order = tmp_path / "order"
    jobs = [sh("short", f"echo short >> {order}"), sh("long1", f"echo long1 >> {order}"),
            sh("long2", "true", after=["long1"]), sh("long3", "true", after=["long2"])]
    execute(make(jobs, pools={"one": {"max_parallel": 1}}, defaults={"pool": "one"}), tmp_path)
    assert order.read_text().split() == ["long1", "short"]


def test_a_failure_skips_dependents_and_names_the_predecessor(tmp_path: Path) -> None:
    pipeline = make([sh("bad", "echo broken >&2; exit 3"), sh("next", "true", after=["bad"]),
                     sh("after_next", "true", after=["next"]), sh("fine", "true")])
    result, events = execute(pipeline, tmp_path)
    assert result.state == RunState.FAILED
    assert result.tasks == {"bad": "FAILED", "next": "SKIPPED", "after_next": "SKIPPED", "fine": "SUCCEEDED"}
    skip = next(e for e in events if isinstance(e, TaskChanged) and e.task == "next" and e.state == "SKIPPED")
    assert skip.reason == "predecessor not succeeded: bad FAILED"
    ended = next(e for e in events if isinstance(e, AttemptEnded) and e.task == "bad")
    assert ended.exit_code == 3 and ended.error is not None and "broken" in ended.error


def test_all_done_runs_anyway_like_the_seed(tmp_path: Path) -> None:
    result, _ = execute(make([sh("bad", "exit 1"), sh("anyway", "true", after=["bad"], trigger_rule="all_done")]),
                        tmp_path)
    assert result.tasks["anyway"] == TaskState.SUCCEEDED and result.state == RunState.FAILED


def test_retries_until_success_with_every_attempt_recorded(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    script = f"echo x >> {counter}; test $(wc -l < {counter}) -ge 3"
    result, events = execute(make([sh("flaky", script, retries=5, retry_delay=0.2, retry_backoff=2)]), tmp_path)
    attempts = [(e.attempt, e.status) for e in events if isinstance(e, AttemptEnded)]
    assert attempts == [(1, "FAILED"), (2, "FAILED"), (3, "DONE")]
    assert result.tasks["flaky"] == TaskState.SUCCEEDED
    waits = [(e.next_attempt, e.delay) for e in events if isinstance(e, RetryWaiting)]
    assert waits == [(2, 0.2), (3, 0.4)]  # the delay, then doubled by the backoff
    ended = {e.attempt: e.at for e in events if isinstance(e, AttemptEnded)}
    started = {e.attempt: e.at for e in events if isinstance(e, AttemptStarted)}
    for attempt, delay in waits:
        assert (started[attempt] - ended[attempt - 1]).total_seconds() >= delay


def test_retries_run_out(tmp_path: Path) -> None:
    _result, events = execute(make([sh("bad", "exit 1", retries=2)]), tmp_path)
    assert [e.attempt for e in events if isinstance(e, AttemptEnded)] == [1, 2, 3]
    failed = next(e for e in events if isinstance(e, TaskChanged) and e.state == "FAILED")
    assert failed.reason == "attempt 3 FAILED, the last of 3 allowed (exit code 1)"


def test_after_a_retry_the_reason_names_the_real_attempt_number(tmp_path: Path) -> None:
    prior = {"bad": PriorTask(TaskState.FAILED, 3)}
    _result, events = execute(make([sh("bad", "exit 1", retries=2)]), tmp_path, prior=prior, run_attempt=2)
    failed = next(e for e in events if isinstance(e, TaskChanged) and e.state == "FAILED")
    assert failed.attempt == 6
    assert failed.reason == "attempt 6 FAILED, the last of 3 allowed in this retry (exit code 1)"


def test_a_listener_that_fails_never_touches_the_run(tmp_path: Path) -> None:
    def broken(_event: Event) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    events: list[Event] = []
    pipeline = make([sh("a", "true"), sh("b", "true", after=["a"])])
    runner = LocalRunner(pipeline.images, cwd=tmp_path, kill_grace=1.0)
    graph_run = GraphRun(pipeline, lambda _job: runner, [broken, events.append], tmp_path / "logs")
    result = closing(runner, graph_run.run())
    assert result.state == RunState.SUCCEEDED
    assert isinstance(events[-1], RunEnded) and events[-1].state == RunState.SUCCEEDED
    assert [listener for listener, _ in graph_run.listener_failures] == [broken]


def test_an_essential_listener_that_fails_cancels_the_run_rather_than_run_unrecorded(tmp_path: Path) -> None:
    class Recorder:
        essential = True

        def __init__(self) -> None:
            self.seen = 0

        def __call__(self, event: Event) -> None:
            self.seen += 1
            if isinstance(event, AttemptStarted):
                raise OSError(28, "No space left on device")

    marker = tmp_path / "second-ran"
    pipeline = make([sh("a", "sleep 0.2"), sh("b", f"touch {marker}", after=["a"])])
    runner = LocalRunner(pipeline.images, cwd=tmp_path, kill_grace=1.0)
    events: list[Event] = []
    graph_run = GraphRun(pipeline, lambda _job: runner, [Recorder(), events.append], tmp_path / "logs")
    result = closing(runner, graph_run.run())
    assert result.state == RunState.CANCELLED
    assert not marker.exists()
    assert {e.task: e.state for e in events if isinstance(e, TaskChanged) and e.state in ("CANCELLED",)} == {
        "a": TaskState.CANCELLED, "b": TaskState.CANCELLED}


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; wait"
    result, events = execute(make([sh("slow", script, timeout=2)]), tmp_path)
    ended = next(e for e in events if isinstance(e, AttemptEnded))
    assert ended.status == AttemptStatus.TIMEOUT and ended.error is not None
    assert ended.error.startswith("timed out after 2s")
    assert result.tasks["slow"] == TaskState.FAILED
    for pid in map(int, pids.read_text().split()):
        assert not process_alive(pid), f"process {pid} survived the timeout"


def test_children_left_behind_by_a_finished_job_are_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    execute(make([sh("leaky", f"sleep 60 & echo $! > {pids}")]), tmp_path)
    assert not process_alive(int(pids.read_text()))


def test_cancel_stops_running_jobs_and_still_runs_the_finalizer(tmp_path: Path) -> None:
    pids, final = tmp_path / "pids", tmp_path / "final"
    pipeline = make([sh("slow", f"echo $$ >> {pids}; sleep 60"), sh("later", "true", after=["slow"])],
                    finalizer={"image": "sh", "args": [f'echo "$JOBGRAPH_TASK_STATES" > {final}']})
    events: list[Event] = []
    runner = LocalRunner(pipeline.images, cwd=tmp_path, kill_grace=1.0)
    graph_run = GraphRun(pipeline, lambda _job: runner, [events.append], tmp_path / "logs")

    async def main() -> RunResult:
        task = asyncio.create_task(graph_run.run())
        while not pids.exists():
            await asyncio.sleep(0.02)
        graph_run.cancel()
        return await task

    result = closing(runner, main())
    assert result.state == RunState.CANCELLED
    assert result.tasks["slow"] == TaskState.CANCELLED and result.tasks["later"] == TaskState.CANCELLED
    assert not process_alive(int(pids.read_text()))
    assert json.loads(final.read_text()) == {"slow": "CANCELLED", "later": "CANCELLED"}
    assert [e.status for e in events if isinstance(e, AttemptEnded) and e.task == "slow"] == ["CANCELLED"]


def test_finalizer_runs_last_even_after_a_failure(tmp_path: Path) -> None:
    order = tmp_path / "order"
    pipeline = make([sh("bad", f"echo bad >> {order}; exit 1")],
                    finalizer={"name": "GET_GRAPH_STATS", "image": "sh", "args": [f"echo final >> {order}"]})
    result, _ = execute(pipeline, tmp_path)
    assert order.read_text().split() == ["bad", "final"]
    assert result.tasks["GET_GRAPH_STATS"] == TaskState.SUCCEEDED and result.state == RunState.FAILED


def test_environment_and_return_values_reach_dependents(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    pipeline = make([
        sh("first", 'printf "%s" "42 rows" > "$JOBGRAPH_RETURN_VALUE_FILE"'),
        sh("second", f'env | grep ^JOBGRAPH_ | sort > {seen}; echo "$GREETING" >> {seen}',
           after=["first"], env={"GREETING": "hello"}),
    ])
    _result, events = execute(pipeline, tmp_path, run_id="run-1")
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert env["JOBGRAPH_PIPELINE"] == "p" and env["JOBGRAPH_RUN_ID"] == "run-1"
    assert env["JOBGRAPH_TASK"] == "second" and env["JOBGRAPH_ATTEMPT"] == "1"
    assert env["JOBGRAPH_SCHEDULED_TIME"].startswith("20")
    assert env["JOBGRAPH_RETURN_VALUE_FILE"].endswith("second/attempt-1.return")
    assert json.loads(env["JOBGRAPH_PREDECESSOR_VALUES"]) == {"first": "42 rows"}
    assert seen.read_text().splitlines()[-1] == "hello"
    done = next(e for e in events if isinstance(e, TaskChanged) and e.task == "first" and e.state == "SUCCEEDED")
    assert done.return_value == "42 rows"


def test_a_missing_command_is_an_error_attempt_and_is_retried(tmp_path: Path) -> None:
    pipeline = Pipeline.model_validate({"name": "p", "images": {"x": ["/no/such/program"]},
                                        "jobs": [{"name": "a", "image": "x", "retries": 1}]})
    result, events = execute(pipeline, tmp_path)
    ended = [e for e in events if isinstance(e, AttemptEnded)]
    assert [e.status for e in ended] == [AttemptStatus.ERROR, AttemptStatus.ERROR]
    assert ended[0].error == "cannot start '/no/such/program': No such file or directory"
    assert result.tasks["a"] == TaskState.FAILED


def test_a_retry_keeps_what_succeeded_and_numbers_attempts_on(tmp_path: Path) -> None:
    order = tmp_path / "order"
    pipeline = make([sh("ok", f"echo ok >> {order}"), sh("again", f"echo again >> {order}", after=["ok"])])
    prior = {"ok": PriorTask(TaskState.SUCCEEDED, 1, "v"), "again": PriorTask(TaskState.FAILED, 3)}
    result, events = execute(pipeline, tmp_path, prior=prior, run_attempt=2)
    assert order.read_text().split() == ["again"]
    assert [e.attempt for e in events if isinstance(e, AttemptEnded)] == [4]
    assert result.state == RunState.SUCCEEDED
    assert states(events, "ok") == []


@pytest.fixture(autouse=True)
def _no_stray_children() -> None:
    """Every test here must leave no child process of the test runner behind, and no cgroup of its jobs.

    Cgroups that other tests' runners left in this process (never closed, removed at exit) are not its own,
    nor are children that were there before it (a session's Podman service, started by an earlier test).
    """
    base = cgroup_base()
    before = set() if base is None else set(base.glob(f"{os.getpid()}-*/*"))
    children_file = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    already = set(children_file.read_text().split())
    yield  # type: ignore[misc]
    children = set(children_file.read_text().split()) - already
    assert [c for c in children if process_alive(int(c))] == []
    assert base is None or set(base.glob(f"{os.getpid()}-*/*")) - before == set()


def test_a_cancel_landing_as_a_job_is_dispatched_still_ends_the_run_cleanly(tmp_path: Path) -> None:
    pipeline = make([sh("a", "true"), sh("b", "sleep 30", after=["a"])])
    events: list[Event] = []
    runner = LocalRunner(pipeline.images, cwd=tmp_path, kill_grace=1.0)
    holder: list[GraphRun] = []

    def cancel_when_b_queues(event: Event) -> None:
        if isinstance(event, TaskChanged) and event.task == "b" and event.state == "QUEUED":
            asyncio.get_running_loop().call_soon(holder[0].cancel)

    graph_run = GraphRun(pipeline, lambda _job: runner, [events.append, cancel_when_b_queues], tmp_path / "logs")
    holder.append(graph_run)
    result = closing(runner, graph_run.run())
    assert result.state == RunState.CANCELLED and result.tasks["b"] == TaskState.CANCELLED
    assert any(isinstance(e, RunEnded) for e in events)


class BrokenRunner(LocalRunner):
    """A runner whose wait fails with an unexpected error, as a bug or a dead engine would."""

    async def wait(self, handle: Any) -> Any:
        await super().wait(handle)
        raise ValueError("boom")


def test_an_unexpected_runner_error_fails_that_job_not_the_run(tmp_path: Path) -> None:
    pipeline = make([sh("a", "true"), sh("b", "true")])
    runner = BrokenRunner(pipeline.images, cwd=tmp_path)
    events: list[Event] = []
    result = closing(runner, GraphRun(pipeline, lambda _job: runner, [events.append], tmp_path / "logs").run())
    assert result.state == RunState.FAILED and result.tasks == {"a": "FAILED", "b": "FAILED"}
    ended = [e for e in events if isinstance(e, AttemptEnded)]
    assert {e.status for e in ended} == {AttemptStatus.ERROR}
    assert all("internal error: ValueError('boom')" in (e.error or "") for e in ended)
    assert isinstance(events[-1], RunEnded)


STUBBORN = "trap 'echo term >> {term}' TERM; echo $$ >> {pids}; while :; do sleep 0.05; done"
"""A job that ignores SIGTERM (noting each one), so a kill grace runs to its end."""


def test_a_cancel_during_a_timeouts_kill_grace_still_ends_the_attempt_and_the_job(tmp_path: Path) -> None:
    term, pids = tmp_path / "term", tmp_path / "pids"
    pipeline = make([sh("stubborn", STUBBORN.format(term=term, pids=pids), timeout=0.3), sh("later", "true")],
                    pools={"one": {"max_parallel": 1}}, defaults={"pool": "one"})
    events: list[Event] = []
    runner = LocalRunner(pipeline.images, cwd=tmp_path, kill_grace=1.5)
    graph_run = GraphRun(pipeline, lambda _job: runner, [events.append], tmp_path / "logs")

    async def main() -> RunResult:
        task = asyncio.create_task(graph_run.run())
        while not term.exists():
            await asyncio.sleep(0.02)
        graph_run.cancel()
        return await task

    result = closing(runner, main())
    started = [(e.task, e.attempt) for e in events if isinstance(e, AttemptStarted)]
    ended = [(e.task, e.attempt, e.status) for e in events if isinstance(e, AttemptEnded)]
    assert started == [("stubborn", 1)] and ended == [("stubborn", 1, AttemptStatus.TIMEOUT)]
    assert result.state == RunState.CANCELLED
    assert result.tasks == {"stubborn": TaskState.CANCELLED, "later": TaskState.CANCELLED}
    assert states(events, "stubborn")[-1] == TaskState.CANCELLED
    assert not process_alive(int(pids.read_text()))


def test_sigint_during_a_timeouts_kill_grace_leaves_every_record_ended(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    term, pids = tmp_path / "term", tmp_path / "pids"
    path = write_pipeline({"jobs": [sh("stubborn", STUBBORN.format(term=term, pids=pids), timeout=0.3,
                                       retries=2)]})
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "JOBGRAPH_KILL_GRACE": "1.5"}
    env.pop("JOBGRAPH_STORE", None)
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", str(path)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # a busy machine can take long to start the run (a fresh store migrates)
    while not term.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert term.exists(), "the job's timeout never sent it SIGTERM"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    store = Store(store_url(tmp_path))
    run = store.runs(1)[0]
    assert run.state == RunState.CANCELLED and run.finished_at is not None
    assert [(t.task, t.state) for t in store.tasks(run.run_id)] == [("stubborn", TaskState.CANCELLED)]
    assert [(a.attempt, a.status) for a in store.attempts(run.run_id)] == [(1, AttemptStatus.TIMEOUT)]
    assert all(a.finished_at is not None for a in store.attempts(run.run_id))
    assert not process_alive(int(pids.read_text()))
