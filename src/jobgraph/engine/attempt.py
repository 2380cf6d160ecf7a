"""One job's attempts within a graph run: what a runner gets for each, how each runs and ends, and the retries.

Split from engine/run.py, which decides *when* a job runs (ready set, pools, fan-out, the run's state); this
module decides *how* it runs once dispatched: the spec (placeholders filled, the JOBGRAPH_* variables,
secrets), one execution (start or adopt, wait within the timeout, stop whatever interrupted it, the log
tail of a failure, the return value), and the retry loop that ends in the job's final state.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from jobgraph.config.model import Finalizer, Job, Pipeline
from jobgraph.engine import fan_out, retry_rules
from jobgraph.engine.delivery import Delivery
from jobgraph.engine.events import AttemptAdopted, AttemptEnded, AttemptStarted, AttemptSubmitted, RetryWaiting
from jobgraph.engine.templating import needs_rendering, rendered
from jobgraph.errors import RunnerError
from jobgraph.runners.base import DEFAULT_LOG_LIMIT, AnyRunner, JobSpec, Outcome
from jobgraph.runners.output import scrub_return_file
from jobgraph.runners.redaction import redactor_for, stored_text
from jobgraph.states import AttemptStatus, TaskState
from jobgraph.template import TemplateError

LOG_TAIL_BYTES = 4096
"""How much of a failed attempt's output is stored with it, like SYSTEM$GET_SERVICE_LOGS."""

RETURN_VALUE_MAX_BYTES = 10_000
"""Snowflake's SYSTEM$SET_RETURN_VALUE takes at most 10 kB; so do we."""


def now() -> datetime:
    """Timestamps are UTC everywhere; displays convert."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Adoption:
    """An attempt an earlier jobgraph submitted to a remote backend and died waiting for: waited for again."""

    attempt: int
    reference: str
    started_at: datetime


class StateSetter(Protocol):
    """How the run records a job's state (it keeps the terminal ones for the ready set and the run's end)."""

    def __call__(self, name: str, state: TaskState, attempt: int = 0, reason: str | None = None,
                 return_value: str | None = None) -> None: ...


class Attempts:
    """The attempts of one run's jobs. `values` (return values by job) and `states` are the run's own, shared;
    `earlier`: how many attempts each job had in earlier attempts of the run (a retry numbers on from there)."""

    def __init__(self, pipeline: Pipeline, run_id: str, scheduled_time: datetime, params: dict[str, object],
                 log_dir: Path, secrets: Mapping[str, str], runner_for: Callable[[Job], AnyRunner], *,
                 earlier: Mapping[str, int], adopt: Mapping[str, Adoption], fan_outs: fan_out.FanOuts,
                 values: dict[str, str], states: Mapping[str, TaskState], delivery: Delivery,
                 set_state: StateSetter) -> None:
        self.pipeline = pipeline
        self.run_id = run_id
        self.scheduled_time = scheduled_time
        self.params = params
        self.params_json = json.dumps(params, ensure_ascii=False) if pipeline.params else None
        self._log_dir = log_dir
        self._secrets = secrets
        self._runner_for = runner_for
        self._earlier = earlier
        self._adopt = adopt
        self._fan_outs = fan_outs
        self._values = values
        self._states = states
        self._delivery = delivery
        self._set_state = set_state
        self._limits = {name.casefold(): pool.limits() for name, pool in pipeline.pools.items()}
        self._secret_values = frozenset(v for v in secrets.values() if v)
        self.redactor = redactor_for(self._secret_values)

    async def run_job(self, job: Job) -> TaskState:
        """Every attempt of one job, with retry delays; never raises, always returns a final state."""
        adoption = self._adopt.get(job.name)
        first = adoption.attempt if adoption else self._earlier.get(job.name, 0) + 1
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
                    self._delivery.send(RetryWaiting(self.run_id, job.name, attempt + 1, now(), delay))
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

    def spec_for(self, job: Job, attempt: int) -> JobSpec:
        """Everything a runner gets for one attempt of a job (`jobgraph plan` shows it for attempt 1).

        TemplateError if a placeholder has no value (the attempt is then recorded as ERROR)."""
        cpu, memory = self._limits.get((job.pool or "").casefold(), (None, None))
        command, args, own_env = job.command, job.args, job.env
        if needs_rendering(job):
            command, args, own_env = rendered(job, self.template_values(job, attempt))
        return JobSpec(self.run_id, self.pipeline.name, job.name, attempt, job.image, args,
                       self._env(job, attempt, own_env), self._log_dir / job.name / f"attempt-{attempt}.log",
                       pool=job.pool or "default", cpu=cpu, memory_bytes=memory, container_name=job.container_name,
                       volumes=job.volumes, workdir=job.workdir, network=job.network,
                       secret_values=self._secret_values, withheld_env=frozenset(self._secrets) - set(job.secrets),
                       secret_names=frozenset(job.secrets),
                       return_value_path=self._return_value_path(job, attempt),
                       log_limit=job.log_limit or DEFAULT_LOG_LIMIT, timeout=job.timeout, command=command)

    def template_values(self, job: Job, attempt: int) -> dict[str, object]:
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
            self._delivery.send(AttemptStarted(self.run_id, job.name, attempt, started, log_path, runner.name))
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
                    self._delivery.send(AttemptSubmitted(self.run_id, job.name, attempt, runner.name, reference))
                    self._delivery.flush()  # the handle is recorded before the attempt is waited for
                if adoption is not None:
                    self._delivery.send(AttemptAdopted(self.run_id, job.name, attempt, now()))
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
            scrub_return_file(return_path, self.redactor)
            error = stored_text(outcome.error, self.redactor) if outcome.error else None
            self._delivery.send(AttemptEnded(self.run_id, job.name, attempt, outcome.status, started,
                                             outcome.ended_at or now(), outcome.exit_code, error, log_path))
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
        if self.params_json is not None:
            env["JOBGRAPH_PARAMS"] = self.params_json
        secrets = {name: self._secrets[name] for name in job.secrets if name in self._secrets}
        return {**env, **own, **secrets}

    def _return_value_path(self, job: Job, attempt: int) -> Path:
        return self._log_dir / job.name / f"attempt-{attempt}.return"

    async def _take_return_value(self, job: Job, runner: AnyRunner, handle: object) -> None:
        """The attempt's return value, through its runner (bounded, never through a link), redacted, NUL-free."""
        value = await runner.read_return_value(handle, RETURN_VALUE_MAX_BYTES)
        if value is not None:
            self._values[job.name] = stored_text(value, self.redactor)


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
