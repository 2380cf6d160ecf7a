"""One graph run: a ready set over the DAG, pools, fan-out, skips, cancel, the finalizer, and the run's state.

The loop is graphlib's prepare/get_ready/done, written out so that a failed job can still be
"done": each finished job decrements its successors' counters (O(jobs + edges) per run), and a job
whose counter reaches zero is either queued in its pool, highest rank first, or skipped because a
predecessor did not succeed. How a dispatched job runs (its attempts, retries and timeouts) is
engine/attempt.py's part.
"""

from __future__ import annotations

import asyncio
import heapq
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from jobgraph.config.model import Finalizer, Job, Pipeline, TriggerRule
from jobgraph.engine import fan_out
from jobgraph.engine.attempt import RETURN_VALUE_MAX_BYTES, Adoption, Attempts, now
from jobgraph.engine.delivery import Delivery
from jobgraph.engine.events import Event, Listener, RunEnded, RunStarted, TaskChanged, TaskInfo
from jobgraph.graph import Dag
from jobgraph.runners.base import AnyRunner, JobSpec
from jobgraph.runners.redaction import stored_text
from jobgraph.selection import Selection, restricted, selected_jobs, stored
from jobgraph.states import TERMINAL_TASK_STATES, RunState, TaskState


@dataclass(frozen=True)
class PriorTask:
    """How a job ended in an earlier attempt of the same run, for `jobgraph retry`."""

    state: TaskState
    attempts: int
    return_value: str | None = None
    item: str | None = None
    """A fanned-out job's copy: its item's JSON (a retry keeps the copy only for the same item)."""


@dataclass(frozen=True)
class RunResult:
    """The end of a graph run: its state and every job's."""

    run_id: str
    state: RunState
    tasks: Mapping[str, TaskState]


@dataclass
class _Pool:
    slots: int
    running: int = 0
    ready: list[tuple[int, int, str]] = field(default_factory=list)


class GraphRun:
    """Runs one pipeline once. `cancel()` may be called from a signal handler at any time."""

    def __init__(
        self,
        pipeline: Pipeline,
        runner_for: Callable[[Job], AnyRunner],
        listeners: Sequence[Listener],
        log_dir: Path,
        run_id: str | None = None,
        scheduled_time: datetime | None = None,
        prior: Mapping[str, PriorTask] | None = None,
        run_attempt: int = 1,
        secrets: Mapping[str, str] | None = None,
        trigger: str = "manual",
        version: str | None = None,
        adopt: Mapping[str, Adoption] | None = None,
        keep: frozenset[TaskState] = frozenset({TaskState.SUCCEEDED}),
        params: Mapping[str, object] | None = None,
        selection: Selection | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.run_id = run_id or str(uuid.uuid4())
        self.scheduled_time = scheduled_time or now()
        self._delivery = Delivery(listeners, self.cancel)
        self._prior = prior or {}
        self._keep = keep
        self._run_attempt = run_attempt
        self.params = dict(params or {})
        self._origin = (trigger, version)
        self._selection = stored(selection)  # a partial run's jobs are the only ones it has (selection.py)
        self._jobs = {job.name: job for job in restricted(pipeline, selected_jobs(selection))}
        self._dag = Dag.build((job.name, job.after) for job in self._jobs.values())
        self._states: dict[str, TaskState] = {}
        self._values: dict[str, str] = {}
        self._fan_outs = fan_out.FanOuts(self.run_id, run_attempt, {
            name: fan_out.Kept(p.state, p.item, p.return_value) for name, p in self._prior.items()
            if p.item is not None}, keep)
        self._pools: dict[str, _Pool] = {}
        self._running: dict[asyncio.Task[TaskState], str] = {}
        self._told_to_stop: set[asyncio.Task[TaskState]] = set()
        self._sequence = 0
        self._cancelled = False
        self._attempts = Attempts(
            pipeline, self.run_id, self.scheduled_time, self.params,
            (log_dir / self.run_id).resolve(),  # once: job names are plain, nothing below is a link
            secrets or {}, runner_for, earlier={n: p.attempts for n, p in self._prior.items()}, adopt=adopt or {},
            fan_outs=self._fan_outs, values=self._values, states=self._states, delivery=self._delivery,
            set_state=self._set_state)
        self._redactor = self._attempts.redactor

    def cancel(self) -> None:
        """Stop every running job and start no other; the finalizer still runs.

        Each job is told once: a second Ctrl-C must not interrupt the kill of the first, or a job
        that ignores SIGTERM would never get its SIGKILL. A cancel during the finalizer stops it.
        """
        self._cancelled = True
        for task in self._running:
            if task not in self._told_to_stop:
                self._told_to_stop.add(task)
                task.cancel()

    @property
    def listener_failures(self) -> list[tuple[Listener, Exception]]:
        """Each listener that raised, and what it raised: it was told nothing more."""
        return self._delivery.failures

    async def run(self) -> RunResult:
        """Run every job but those whose earlier state is kept (a retry keeps what succeeded; resuming a
        lost run keeps every job that had ended), then the finalizer; every event is delivered before it returns."""
        try:
            return await self._run()
        finally:
            self._delivery.flush()

    async def _run(self) -> RunResult:
        self._emit(RunStarted(
            self.run_id, self.pipeline.name, now(), self.scheduled_time, self._task_infos(),
            self.pipeline.model_dump_json(), self._run_attempt,
            resumed=self._kept(lambda state: state == TaskState.SUCCEEDED),
            trigger=self._origin[0], version=self._origin[1],
            kept=self._kept(lambda state: state != TaskState.SUCCEEDED), selection=self._selection,
            params=None if self._attempts.params_json is None else self._redactor.text(self._attempts.params_json),
        ))
        waiting: dict[str, int] = {}
        for name in self._dag.order:
            prior = self._prior.get(name)
            if prior is not None and prior.state in self._keep:
                self._states[name] = prior.state
                if prior.return_value is not None:
                    self._values[name] = prior.return_value
            else:
                waiting[name] = sum(1 for p in self._dag.predecessors[name] if p not in self._states
                                    or self._states[p] != TaskState.SUCCEEDED)
        self._waiting = waiting
        for name, count in list(waiting.items()):
            if count == 0:
                self._became_ready(name)
        for name, kept in list(self._states.items()):  # what a kept failure blocks is skipped, as it was
            if kept != TaskState.SUCCEEDED:
                for successor in self._release_successors(name):
                    self._became_ready(successor)

        while self._running or (not self._cancelled and any(p.ready for p in self._pools.values())):
            self._dispatch()
            finished, _ = await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                name = self._running.pop(task)
                self._pools[self._pool_key(self._jobs[name])].running -= 1
                if task.cancelled():  # cancelled before its first step: it recorded nothing yet
                    self._set_state(name, TaskState.CANCELLED, reason="the run was cancelled")
                    self._finished(name, TaskState.CANCELLED)
                else:
                    self._finished(name, task.result())

        for name in [*self._fan_outs.copies, *self._dag.order]:
            if name not in self._states:
                self._set_state(name, TaskState.CANCELLED, reason="the run was cancelled")
        state = self._final_state()
        if self.pipeline.finalizer is not None:
            finalizer_state = await self._run_finalizer(self.pipeline.finalizer)
            if self._cancelled:
                state = RunState.CANCELLED
            elif finalizer_state != TaskState.SUCCEEDED and state == RunState.SUCCEEDED:
                state = RunState.FAILED
        self._emit(RunEnded(self.run_id, state, now()))
        return RunResult(self.run_id, state, dict(self._states))

    def _kept(self, which: Callable[[TaskState], bool]) -> tuple[str, ...]:
        """The jobs whose earlier state is kept as it was, of those states `which` picks."""
        return tuple(n for n in self._dag.order if n in self._prior and self._prior[n].state in self._keep
                     and which(self._prior[n].state))

    def _final_state(self) -> RunState:
        if self._cancelled:
            return RunState.CANCELLED
        if all(state == TaskState.SUCCEEDED for state in self._states.values()):
            return RunState.SUCCEEDED
        return RunState.FAILED

    def _became_ready(self, name: str) -> None:
        """All predecessors are done: queue the job, or skip it (and, in turn, what depends on it)."""
        stack = [name]
        while stack:
            current = stack.pop()
            job = self._jobs[current]
            blockers = [p for p in job.after if self._states[p] != TaskState.SUCCEEDED]
            if blockers and job.trigger_rule != TriggerRule.ALL_DONE:
                why = ", ".join(f"{p} {self._states[p]}" for p in blockers)
                self._set_state(current, TaskState.SKIPPED, reason=f"predecessor not succeeded: {why}")
                stack.extend(self._release_successors(current))
                continue
            if job.for_each is not None:
                stack.extend(self._fan_out(job))
                continue
            self._queue(current, job, self._dag.rank[current])

    def _queue(self, name: str, job: Job, rank: int) -> None:
        """Put a job (or a copy) in its pool's ready heap, highest rank first."""
        pool = self._pools.get(self._pool_key(job))
        if pool is None:
            pool = self._pools[self._pool_key(job)] = _Pool(self.pipeline.pool_size(job.pool or ""))
        self._sequence += 1
        heapq.heappush(pool.ready, (-rank, self._sequence, name))
        self._set_state(name, TaskState.QUEUED)

    def _fan_out(self, job: Job) -> list[str]:
        """Expand a ready job with `for_each` into its copies, queued in its pool; the successors this releases
        (when the job ends at once: its list failed, was empty, or every copy is kept from before)."""
        try:
            items = fan_out.items_of(job, self.params, self._values, RETURN_VALUE_MAX_BYTES)
        except fan_out.FanOutError as exc:
            self._set_state(job.name, TaskState.FAILED, reason=str(exc))
            return self._release_successors(job.name)
        # Copies that ended as kept stay when the job itself is retried for not succeeding; a job cleared by a
        # targeted retry (`retry --job`: PENDING again) or rerun although it ended as kept runs every copy again.
        before = self._prior.get(job.name)
        again = before is None or before.state in self._keep or before.state == TaskState.PENDING
        expansion, expanded = self._fan_outs.expand(job, items, {n: p.attempts for n, p in self._prior.items()},
                                                    keep=not again)
        self._emit(expanded)
        for name in expansion.dropped:  # recorded, but no job of this run: the run's state ignores it
            self._emit(TaskChanged(self.run_id, name, TaskState.SKIPPED, now(),
                                   reason=f"not in the list of {job.name} any more (its length is {len(items)} now)"))
        for name, earlier in expansion.kept.items():
            self._states[name] = earlier.state
            if earlier.return_value is not None:
                self._values[name] = earlier.return_value
        if expansion.left == 0:
            self._end_fan_out(expansion)
            return self._release_successors(job.name)
        self._set_state(job.name, TaskState.RUNNING)
        for copy in expansion.to_run:
            self._jobs[copy.name] = copy
            self._queue(copy.name, copy, self._dag.rank[job.name])
        return []

    def _end_fan_out(self, expansion: fan_out.Expansion) -> TaskState:
        state, reason, value = fan_out.outcome(expansion, self._values, RETURN_VALUE_MAX_BYTES)
        if value is not None:
            self._values[expansion.job] = value
        self._set_state(expansion.job, state, reason=reason, return_value=value)
        return state

    def _finished(self, name: str, state: TaskState) -> None:
        self._states[name] = state
        if self._fan_outs.is_copy(name):  # a copy: its job ends with its last copy
            expansion = self._fan_outs.copy_ended(name, state)
            if expansion is None:
                return
            name, state = expansion.job, self._end_fan_out(expansion)
        for successor in self._release_successors(name):
            if self._cancelled:
                continue
            self._became_ready(successor)

    def _release_successors(self, name: str) -> list[str]:
        released = []
        for successor in self._dag.successors[name]:
            if successor in self._waiting:
                self._waiting[successor] -= 1
                if self._waiting[successor] == 0:
                    released.append(successor)
        return released

    def _dispatch(self) -> None:
        if self._cancelled:
            return
        for pool in self._pools.values():
            while pool.ready and pool.running < pool.slots:
                _, _, name = heapq.heappop(pool.ready)
                pool.running += 1
                task = asyncio.create_task(self._attempts.run_job(self._jobs[name]), name=name)
                self._running[task] = name

    async def _run_finalizer(self, finalizer: Finalizer) -> TaskState:
        self._set_state(finalizer.name, TaskState.QUEUED)
        task = asyncio.create_task(self._attempts.run_job(finalizer))
        self._running[task] = finalizer.name
        try:
            return await task
        except asyncio.CancelledError:
            self._set_state(finalizer.name, TaskState.CANCELLED, reason="the run was cancelled")
            return TaskState.CANCELLED
        finally:
            self._running.pop(task, None)

    @classmethod
    def draft(cls, pipeline: Pipeline, log_dir: Path, run_id: str, secrets: Mapping[str, str] | None = None,
              params: Mapping[str, object] | None = None) -> GraphRun:
        """A GraphRun that is never run, to build the specs its attempts would get (`plan`, recovery)."""
        return cls(pipeline, _never_runs, [], log_dir, run_id=run_id, secrets=secrets, params=params)

    def spec_for(self, job: Job, attempt: int) -> JobSpec:
        """Everything a runner gets for one attempt of a job (`jobgraph plan` shows it for attempt 1).

        TemplateError if a placeholder has no value (the attempt is then recorded as ERROR)."""
        return self._attempts.spec_for(job, attempt)

    def _set_state(self, name: str, state: TaskState, attempt: int = 0, reason: str | None = None,
                   return_value: str | None = None) -> None:
        if state in TERMINAL_TASK_STATES:
            self._states[name] = state
        reason = stored_text(reason, self._redactor) if reason else reason
        self._emit(TaskChanged(self.run_id, name, state, now(), attempt, reason, return_value))

    def _pool_key(self, job: Job) -> str:
        return (job.pool or "").casefold()

    def _task_infos(self) -> tuple[TaskInfo, ...]:
        infos = [TaskInfo(j.name, j.pool or "", j.image, j.after) for j in self._jobs.values()]
        if self.pipeline.finalizer is not None:
            f = self.pipeline.finalizer
            infos.append(TaskInfo(f.name, "", f.image, (), is_finalizer=True))
        return tuple(infos)

    def _emit(self, event: Event) -> None:
        """Queue the event for every listener: recorded, then shown, at the end of this loop wake-up."""
        self._delivery.send(event)


def _never_runs(_job: Job) -> AnyRunner:
    raise AssertionError("a draft GraphRun starts no job")
