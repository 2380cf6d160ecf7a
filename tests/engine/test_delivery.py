"""Events of one loop wake-up reach the recorder as one batch, before any display sees any of them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from jobgraph.config import Pipeline
from jobgraph.config.validate import check_pipeline
from jobgraph.engine import Event, RunEnded, TaskChanged
from jobgraph.engine.delivery import Delivery
from jobgraph.engine.run import GraphRun
from jobgraph.runners import LocalRunner
from jobgraph.states import RunState, TaskState
from tests.conftest import sh

AT = datetime(2026, 1, 1, tzinfo=UTC)


class Recorder:
    """An essential listener that keeps each batch it was given, and may fail on one."""

    essential = True

    def __init__(self, fail_on: type | None = None) -> None:
        self.batches: list[list[Event]] = []
        self.fail_on = fail_on

    def __call__(self, event: Event) -> None:
        self.record_all([event])

    def record_all(self, events: Sequence[Event]) -> None:
        if self.fail_on is not None and any(isinstance(event, self.fail_on) for event in events):
            raise OSError(28, "No space left on device")
        self.batches.append(list(events))

    @property
    def recorded(self) -> list[Event]:
        return [event for batch in self.batches for event in batch]


def changed(task: str) -> TaskChanged:
    return TaskChanged("r", task, TaskState.QUEUED, AT)


def test_what_one_wake_up_emits_is_recorded_at_once_then_shown() -> None:
    recorder, shown = Recorder(), []
    recorded_when_shown: list[int] = []

    def display(event: Event) -> None:
        shown.append(event)
        recorded_when_shown.append(len(recorder.recorded))

    delivery = Delivery([display, recorder], lambda: None)  # the recorder first, wherever it is listed

    async def main() -> None:
        loop = asyncio.get_running_loop()
        delivery.send(changed("a"))
        loop.call_soon(delivery.send, changed("b"))  # ready in the same wake-up: joins the batch
        loop.call_soon(lambda: loop.call_soon(delivery.send, changed("c")))  # and so does what that schedules
        await asyncio.sleep(0.05)  # the loop waits: the batch is delivered before it does
        assert recorder.batches == [[changed("a"), changed("b"), changed("c")]]
        delivery.send(changed("d"))
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert recorder.batches == [[changed("a"), changed("b"), changed("c")], [changed("d")]]
    assert shown == recorder.recorded
    assert recorded_when_shown == [3, 3, 3, 4]  # nothing was shown before it was recorded


def test_flush_delivers_at_once_and_outside_a_loop_each_event_is_delivered_as_sent() -> None:
    recorder = Recorder()
    delivery = Delivery([recorder], lambda: None)

    async def main() -> None:
        delivery.send(changed("a"))
        delivery.flush()
        assert recorder.batches == [[changed("a")]]

    asyncio.run(main())
    delivery.send(changed("b"))
    assert recorder.batches == [[changed("a")], [changed("b")]]


def test_a_recorder_that_fails_is_dropped_and_the_run_cancelled_but_displays_go_on() -> None:
    recorder, shown, cancels = Recorder(fail_on=TaskChanged), [], []
    delivery = Delivery([recorder, shown.append], lambda: cancels.append(1))
    delivery.send(changed("a"))
    delivery.send(RunEnded("r", RunState.CANCELLED, AT))
    assert cancels == [1] and recorder.batches == []
    assert [listener for listener, _ in delivery.failures] == [recorder]
    assert shown == [changed("a"), RunEnded("r", RunState.CANCELLED, AT)]


def test_a_recorder_that_fails_on_the_runs_end_cancels_nothing() -> None:
    cancels: list[int] = []
    delivery = Delivery([Recorder(fail_on=RunEnded)], lambda: cancels.append(1))
    delivery.send(RunEnded("r", RunState.SUCCEEDED, AT))
    assert cancels == [] and len(delivery.failures) == 1


def test_a_run_records_about_one_batch_per_job_not_one_per_event(tmp_path: Path) -> None:
    """A chain and a fan-out, two at a time: each job's end and its successor's start share a batch."""
    jobs = [sh(f"c{i}", "true", after=[f"c{i - 1}"] if i else []) for i in range(10)]
    jobs += [sh(f"f{i}", "true", after=["c0"]) for i in range(10)]
    pipeline = check_pipeline(Pipeline.model_validate(
        {"name": "p", "images": {"sh": ["sh", "-c"]}, "defaults": {"pool_size": 2}, "jobs": jobs}), "test")
    runner = LocalRunner(pipeline.images, cwd=tmp_path, kill_grace=1.0)
    recorder, shown = Recorder(), []

    async def main() -> RunState:
        try:
            graph_run = GraphRun(pipeline, lambda _job: runner, [recorder, shown.append], tmp_path / "logs")
            return (await graph_run.run()).state
        finally:
            await runner.aclose()

    assert asyncio.run(main()) == RunState.SUCCEEDED
    assert len(recorder.recorded) == 5 * len(jobs) + 2 and shown == recorder.recorded
    assert len(recorder.batches) <= len(jobs) + 2
    assert isinstance(recorder.batches[-1][-1], RunEnded)
