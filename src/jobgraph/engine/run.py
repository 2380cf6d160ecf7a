"""One graph run: a ready set over the DAG, pools, retries, timeouts, skips, cancel, and the finalizer.

The loop is graphlib's prepare/get_ready/done, written out so that a failed job can still be
"done": each finished job decrements its successors' counters (O(jobs + edges) per run), and a job
whose counter reaches zero is either queued in its pool, highest rank first, or skipped because a
predecessor did not succeed.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from jobgraph.config.model import Finalizer, Job, Pipeline, TriggerRule
from jobgraph.engine import fan_out, retry_rules
from jobgraph.engine.delivery import Delivery
from jobgraph.engine.events import (
    AttemptAdopted,
    AttemptEnded,
    AttemptStarted,
    AttemptSubmitted,
    Event,
    Listener,
    RetryWaiting,
    RunEnded,
    RunStarted,
    TaskChanged,
    TaskInfo,
)
from jobgraph.engine.templating import needs_rendering, rendered
from jobgraph.errors import RunnerError
from jobgraph.graph import Dag
from jobgraph.runners.base import DEFAULT_LOG_LIMIT, AnyRunner, JobSpec, Outcome
from jobgraph.runners.output import redactor_for, scrub_return_file, stored_text
from jobgraph.selection import Selection, restricted, selected_jobs, stored
from jobgraph.states import TERMINAL_TASK_STATES, AttemptStatus, RunState, TaskState
from jobgraph.template import TemplateError

LOG_TAIL_BYTES = 4096
"""How much of a failed attempt's output is stored with it, like SYSTEM$GET_SERVICE_LOGS."""

RETURN_VALUE_MAX_BYTES = 10_000
"""Snowflake's SYSTEM$SET_RETURN_VALUE takes at most 10 kB; so do we."""


@dataclass(frozen=True)
class PriorTask:
    """How a job ended in an earlier attempt of the same run, for `jobgraph retry`."""

    state: TaskState
    attempts: int
    return_value: str | None = None
    item: str | None = None
    """A fanned-out job's copy: its item's JSON (a retry keeps the copy only for the same item)."""


@dataclass(frozen=True)
class Adoption:
    """An attempt an earlier jobgraph submitted to a remote backend and died waiting for: waited for again."""

    attempt: int
    reference: str
    started_at: datetime


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


def now() -> datetime:
    """Timestamps are UTC everywhere; displays convert."""
    return datetime.now(UTC)


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
        self._runner_for = runner_for
        self._delivery = Delivery(listeners, self.cancel)
        self._log_dir = (log_dir / self.run_id).resolve()  # once: job names are plain, nothing below is a link
        self._prior = prior or {}
        self._adopt = adopt or {}
        self._keep = keep
        self._run_attempt = run_attempt
        self._secrets = secrets or {}
        self.params = dict(params or {})
        self._params_json = json.dumps(self.params, ensure_ascii=False) if pipeline.params else None
        self._origin = (trigger, version)
        self._limits = {name.casefold(): pool.limits() for name, pool in pipeline.pools.items()}
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
        self._secret_values = frozenset(v for v in self._secrets.values() if v)
        self._redactor = redactor_for(self._secret_values)

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
            params=None if self._params_json is None else self._redactor.text(self._params_json),
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
            params = self._template_values(job, 0)["params"]
            items = fan_out.items_of(job, params if isinstance(params, Mapping) else {}, self._values,
                                     RETURN_VALUE_MAX_BYTES)
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
                task = asyncio.create_task(self._run_job(self._jobs[name]), name=name)
                self._running[task] = name

    async def _run_finalizer(self, finalizer: Finalizer) -> TaskState:
        self._set_state(finalizer.name, TaskState.QUEUED)
        task = asyncio.create_task(self._run_job(finalizer))
        self._running[task] = finalizer.name
        try:
            return await task
        except asyncio.CancelledError:
            self._set_state(finalizer.name, TaskState.CANCELLED, reason="the run was cancelled")
            return TaskState.CANCELLED
        finally:
            self._running.pop(task, None)

    async def _run_job(self, job: Job) -> TaskState:
        """Every attempt of one job, with retry delays; never raises, always returns a final state."""
        prior = self._prior.get(job.name)
        adoption = self._adopt.get(job.name)
        first = adoption.attempt if adoption else (prior.attempts if prior else 0) + 1
        last = first + (job.retries or 0)
        outcome = Outcome(AttemptStatus.ERROR, error="not started")
        attempt = first
        began = adoption.started_at if adoption else now()
        refused: str | None = None
        try:
            for attempt in range(first, last + 1):
                self._set_state(job.name, TaskState.RUNNING, attempt=attempt)
                outcome = await self._attempt(job, attempt, adoption if attempt == first else None)
                if outcome.status == AttemptStatus.DONE:
                    value = self._values.get(job.name)
                    self._set_state(job.name, TaskState.SUCCEEDED, attempt=attempt, return_value=value)
                    return TaskState.SUCCEEDED
                delay = (job.retry_delay or 0.0) * (job.retry_backoff or 1.0) ** (attempt - first)
                refused = retry_rules.refusal(job, outcome, last - attempt, (now() - began).total_seconds(), delay)
                if refused is not None:
                    break
                if delay > 0:
                    self._emit(RetryWaiting(self.run_id, job.name, attempt + 1, now(), delay))
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self._set_state(job.name, TaskState.CANCELLED, attempt=attempt, reason="the run was cancelled")
            return TaskState.CANCELLED
        except Exception as exc:  # a bug or an OS error must fail this job, not the whole run
            self._set_state(job.name, TaskState.FAILED, attempt=attempt, reason=f"internal error: {exc!r}")
            return TaskState.FAILED
        allowed = last - first + 1
        if refused is None or attempt == last:
            reason = f"attempt {attempt} {outcome.status}, the last of {allowed} allowed" + (
                " in this retry" if first > 1 else "")
        else:
            reason = f"attempt {attempt} {outcome.status}, not retried: {refused}"
        lines = [line.strip() for line in (outcome.error or "").splitlines() if line.strip()]
        if lines:
            reason += f" ({lines[0]})" + (f": {lines[-1]}" if len(lines) > 1 else "")
        self._set_state(job.name, TaskState.FAILED, attempt=attempt, reason=reason)
        return TaskState.FAILED

    @classmethod
    def draft(cls, pipeline: Pipeline, log_dir: Path, run_id: str, secrets: Mapping[str, str] | None = None,
              params: Mapping[str, object] | None = None) -> GraphRun:
        """A GraphRun that is never run, to build the specs its attempts would get (`plan`, recovery)."""
        return cls(pipeline, _never_runs, [], log_dir, run_id=run_id, secrets=secrets, params=params)

    def spec_for(self, job: Job, attempt: int) -> JobSpec:
        """Everything a runner gets for one attempt of a job (`jobgraph plan` shows it for attempt 1).

        TemplateError if a placeholder has no value (the attempt is then recorded as ERROR)."""
        cpu, memory = self._limits.get(self._pool_key(job), (None, None))
        command, args, own_env = job.command, job.args, job.env
        if needs_rendering(job):
            command, args, own_env = rendered(job, self._template_values(job, attempt))
        return JobSpec(self.run_id, self.pipeline.name, job.name, attempt, job.image, args,
                       self._env(job, attempt, own_env), self._log_dir / job.name / f"attempt-{attempt}.log",
                       pool=job.pool or "default", cpu=cpu, memory_bytes=memory, container_name=job.container_name,
                       volumes=job.volumes, workdir=job.workdir, network=job.network,
                       secret_values=self._secret_values, withheld_env=frozenset(self._secrets) - set(job.secrets),
                       secret_names=frozenset(job.secrets),
                       return_value_path=self._return_value_path(job, attempt),
                       log_limit=job.log_limit or DEFAULT_LOG_LIMIT, timeout=job.timeout, command=command)

    def _template_values(self, job: Job, attempt: int) -> dict[str, object]:
        """What a placeholder in the job's command, args and env may name, for this attempt (a copy: its item)."""
        values: dict[str, object] = {
            "params": self.params, "scheduled_time": self.scheduled_time.isoformat(), "run_id": self.run_id,
            "pipeline": self.pipeline.name, "job": job.name, "attempt": attempt}
        is_copy, item = self._fan_outs.item(job.name)
        if is_copy:
            values["item"] = item
        elif job.for_each is not None:  # the job itself never runs, but `plan` shows it as its first copy
            values["item"] = fan_out.planned_item(job)
        return values

    async def _attempt(self, job: Job, attempt: int, adoption: Adoption | None = None) -> Outcome:
        """One execution: start (or adopt), wait (bounded by the timeout), and record how it ended, whatever happens.

        An adopted attempt is already recorded as started, with its handle: it is only waited for.
        """
        runner = self._runner_for(job)
        log_path = self._log_dir / job.name / f"attempt-{attempt}.log"
        return_path = self._return_value_path(job, attempt)
        started = adoption.started_at if adoption else now()
        if adoption is None:
            self._emit(AttemptStarted(self.run_id, job.name, attempt, started, log_path, runner.name))
        handle = None
        outcome = Outcome(AttemptStatus.CANCELLED, None, "cancelled")
        waited = False
        try:
            try:
                self._delivery.flush()  # the run and the attempt are recorded before the job exists
                spec = self.spec_for(job, attempt)
                if adoption is not None:
                    handle = await runner.adopt(adoption.reference, spec)
                else:
                    handle = await runner.start(spec)
                reference = runner.handle_ref(handle)
                if reference:  # recorded again when adopted: it may never have been (a lost sbatch answer)
                    self._emit(AttemptSubmitted(self.run_id, job.name, attempt, runner.name, reference))
                    self._delivery.flush()  # the handle is recorded before the attempt is waited for
                if adoption is not None:
                    self._emit(AttemptAdopted(self.run_id, job.name, attempt, now()))
                outcome = await asyncio.wait_for(runner.wait(handle), _time_left(job.timeout, started))
                waited = True  # the runner has cleaned up after the job
                if outcome.status == AttemptStatus.DONE:
                    await self._take_return_value(job, runner, handle)
            except RunnerError as exc:
                outcome = Outcome(AttemptStatus.ERROR, None, str(exc))
            except TemplateError as exc:
                outcome = Outcome(AttemptStatus.ERROR, None, f"cannot fill in the job's placeholders: {exc}")
            except TimeoutError:
                outcome = Outcome(AttemptStatus.TIMEOUT, None, f"timed out after {job.timeout:g}s")
            except Exception as exc:
                outcome = Outcome(AttemptStatus.ERROR, None, f"internal error: {exc!r}")
            finally:  # a timeout, an error or a cancel: stop the job, even if cancelled meanwhile
                if not waited:
                    await _stop(runner, handle)
            if outcome.status not in (AttemptStatus.DONE, AttemptStatus.CANCELLED) and handle is not None:
                outcome = await _with_log_tail(runner, handle, outcome)
        finally:  # whatever interrupted what, the attempt that started ends, with what is known of it
            scrub_return_file(return_path, self._redactor)
            error = stored_text(outcome.error, self._redactor) if outcome.error else None
            self._emit(AttemptEnded(self.run_id, job.name, attempt, outcome.status, started, outcome.ended_at or now(),
                                    outcome.exit_code, error, log_path))
        return Outcome(outcome.status, outcome.exit_code, error, outcome.ended_at, outcome.cause)

    def _env(self, job: Job, attempt: int, own: Mapping[str, str]) -> dict[str, str]:
        """The JOBGRAPH_* variables (Snowflake's SYSTEM$TASK_RUNTIME_INFO), then the job's own env."""
        env = {
            "JOBGRAPH_PIPELINE": self.pipeline.name,
            "JOBGRAPH_RUN_ID": self.run_id,
            "JOBGRAPH_TASK": job.name,
            "JOBGRAPH_ATTEMPT": str(attempt),
            "JOBGRAPH_SCHEDULED_TIME": self.scheduled_time.isoformat(),
            "JOBGRAPH_RETURN_VALUE_FILE": str(self._return_value_path(job, attempt)),
        }
        is_copy, item = self._fan_outs.item(job.name)
        if is_copy:
            env["JOBGRAPH_ITEM"] = fan_out.as_env(item)
        values = {p: self._values[p] for p in job.after if p in self._values}
        if values:
            env["JOBGRAPH_PREDECESSOR_VALUES"] = json.dumps(values)
        if isinstance(job, Finalizer):
            env["JOBGRAPH_TASK_STATES"] = json.dumps({n: str(s) for n, s in self._states.items()})
        if self._params_json is not None:
            env["JOBGRAPH_PARAMS"] = self._params_json
        secrets = {name: self._secrets[name] for name in job.secrets if name in self._secrets}
        return {**env, **own, **secrets}

    def _return_value_path(self, job: Job, attempt: int) -> Path:
        return self._log_dir / job.name / f"attempt-{attempt}.return"

    async def _take_return_value(self, job: Job, runner: AnyRunner, handle: object) -> None:
        """The attempt's return value, through its runner (bounded, never through a link), redacted, NUL-free."""
        value = await runner.read_return_value(handle, RETURN_VALUE_MAX_BYTES)
        if value is not None:
            self._values[job.name] = stored_text(value, self._redactor)

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


async def _stop(runner: AnyRunner, handle: object) -> None:
    """Have the runner stop a job, and finish doing so however often this task is cancelled meanwhile.

    A cancel that arrives while the job is being stopped is raised once the job is stopped.
    """
    if handle is None:
        return
    stopping = asyncio.ensure_future(runner.cancel(handle))
    cancelled = False
    while not stopping.done():
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            if stopping.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    stopping.result()


def _never_runs(_job: Job) -> AnyRunner:
    raise AssertionError("a draft GraphRun starts no job")


def _time_left(timeout: float | None, started: datetime) -> float | None:
    """What is left of a job's timeout for an attempt that started at `started` (earlier, if adopted)."""
    return None if timeout is None else max(0.0, timeout - (now() - started).total_seconds())


async def _with_log_tail(runner: AnyRunner, handle: object, outcome: Outcome) -> Outcome:
    """The outcome with the end of the job's output added to its error, for the error column."""
    try:
        tail = (await runner.logs(handle, LOG_TAIL_BYTES)).strip()
    except Exception:
        return outcome
    error = f"{outcome.error}\n{tail}" if tail else outcome.error
    return Outcome(outcome.status, outcome.exit_code, error, outcome.ended_at, outcome.cause)
