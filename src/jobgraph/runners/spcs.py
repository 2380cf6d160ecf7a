"""Run each attempt as one Snowpark Container Services job service; one SHOW per poll follows them all.

The statements are in spcs_statements.py (binds only), the service's name and specification in
spcs_spec.py, the connection in spcs_session.py (the connector, or the local emulator); this module is
the state machine between them.

- One attempt = `EXECUTE JOB SERVICE ... ASYNC = TRUE`: Snowflake runs it on, whatever happens to
  jobgraph. `handle_ref` is the service's name (`JG_<RUN8>_<JOB>_<ATTEMPT>`), which the store records;
  `adopt` takes the same name back after a restart, `find` looks for it when the name was never recorded.
- One `SHOW JOB SERVICES LIKE 'JG_<RUN8>_%'` per poll (`poll_secs`) gives the status of every service of
  the runs it watches; one that is not listed is looked up once more (`DESCRIBE SERVICE`) before it is
  taken as gone. The connector blocks: every statement runs in a worker thread, one at a time on the one
  session of the runner, never on the event loop.
- How a status becomes an Outcome (spcs_states.py; the exit code is the container's `last_exit_code` where
  Snowflake gives one, else none): DONE -> DONE; FAILED -> FAILED with the container's status message;
  INTERNAL_ERROR -> ERROR (Snowflake's doing: it may be retried); SUSPENDING/SUSPENDED -> ERROR (the
  compute pool was suspended under the job);
  CANCELLING/CANCELLED/DELETING/DELETED or gone -> CANCELLED when jobgraph cancelled it, else an ERROR
  saying someone else did; PENDING/RUNNING -> keep waiting, but a service PENDING for `pending_limit_secs`
  (no node for it, an image SPCS cannot pull) is an ERROR with SPCS's reason, and dropped.
- Once a service ended its log is read once (`SYSTEM$GET_SERVICE_LOGS`, `log_lines` lines per container;
  spcs_reading.py) into the attempt's log, redacted and capped, and the service is dropped: its status,
  message, exit code and log are in jobgraph's store (an ended job service otherwise stays, listed, until
  dropped). `cancel` (a cancel, a timeout) reads what the service printed so far, within a bounded wait
  that never holds the drop back, then drops it (`DROP SERVICE IF EXISTS`).
- An adopted service found already ended is recorded as ending at its last change (`updated_on`, when
  Snowflake gives one after `created_on`), not when the new jobgraph saw it; one seen running ends "now",
  within a poll of its end.
- `open` checks with `SHOW COMPUTE POOLS` that every compute pool the jobs use exists, before anything runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobgraph.errors import RunnerError
from jobgraph.runners import spcs_reading
from jobgraph.runners.base import JobSpec, Outcome
from jobgraph.runners.output import tail
from jobgraph.runners.redaction import redactor_for
from jobgraph.runners.spcs_reading import ended, log_so_far, log_text, status_row, stuck
from jobgraph.runners.spcs_session import SqlSession, connect
from jobgraph.runners.spcs_spec import (
    PREFIX,
    SpcsSettings,
    comment_for,
    job_spec,
    run_prefix,
    service_name,
    spec_yaml,
)
from jobgraph.runners.spcs_statements import (
    Statement,
    drop_service,
    execute_job_service,
    render,
    service_logs,
    show_compute_pools,
    show_job_services,
    show_service_containers,
)
from jobgraph.runners.spcs_states import GONE, TERMINAL, WAITING
from jobgraph.runners.watched import Watched
from jobgraph.states import AttemptStatus

if TYPE_CHECKING:
    from pydantic import BaseModel

    from jobgraph.config.model import Pipeline, Pool

UNREACHABLE_SECS = 300.0
"""How long Snowflake may fail every poll before each attempt in flight is an ERROR (its service may run on)."""

EMULATOR_NOTE = ("spcs runner: job services run through jobgraph's local SPCS emulator (Podman), not Snowflake: "
                 "no Snowflake account is used\n")


@dataclass(eq=False)
class SpcsHandle:
    """A submitted attempt: its service's name, and the outcome the poller will set."""

    name: str
    spec: JobSpec
    outcome: asyncio.Future[Outcome]
    cancelled: bool = False
    finishing: bool = False
    adopted: bool = False
    """Submitted by an earlier jobgraph: it may have ended long before this one saw it."""
    pending_since: float | None = None
    """When this runner first saw the service PENDING (the event loop's clock); None once it runs."""
    reading: asyncio.Task[None] | None = None
    """Reading how it ended (or giving up on it), started by a poll: a cancel lets it finish first."""


class SpcsRunner:
    """Runner for Snowpark Container Services job services."""

    name = "spcs"

    def __init__(self, settings: SpcsSettings, pools: Mapping[str, Pool], needed: Mapping[str, list[str]],
                 container_images: Mapping[str, str] | None = None, folder: Path | None = None) -> None:
        self._settings = settings
        self._pipeline_pools = dict(pools)
        self._folder = folder
        self._pools = {name.upper(): pool for name, pool in pools.items()}
        self._needed = {name.upper(): jobs for name, jobs in needed.items()}
        self._images = dict(container_images or {})
        self._session: SqlSession | None = None
        self._connecting = asyncio.Lock()
        self._one_at_a_time = asyncio.Lock()
        self._checked = False
        self._watched: Watched[SpcsHandle] = Watched(lambda handle: handle.name)
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.polls = 0
        """How many SHOW JOB SERVICES rounds this runner made (one per poll, whatever the number of jobs)."""

    @property
    def settings(self) -> SpcsSettings:
        """The `runners.spcs` settings."""
        return self._settings

    async def open(self) -> None:
        """Connect, then check that every compute pool the jobs use exists (`SHOW COMPUTE POOLS`)."""
        await self._connect()
        if self._checked:
            return
        rows = await self._run(show_compute_pools())
        existing = {str(row.get("name", "")).upper(): row for row in rows}
        missing = {pool: jobs for pool, jobs in self._needed.items() if pool not in existing}
        if missing:
            where = "the emulator" if self._settings.emulator else "Snowflake"
            listed = ", ".join(sorted(existing)) or "none"
            raise RunnerError("; ".join(
                f"compute pool {pool} (pool of job {', '.join(jobs[:3])}{' ...' if len(jobs) > 3 else ''}) does "
                f"not exist in {where}" for pool, jobs in sorted(missing.items())) + f"; the compute pools there: "
                f"{listed} (create it with CREATE COMPUTE POOL, or fix the job's pool)")
        self._checked = True

    def describe(self, spec: JobSpec) -> dict[str, object]:
        """What `start` sends for this attempt (rendered as Snowflake receives it), then how it is followed."""
        name = service_name(spec)
        doc = job_spec(spec, self._settings, self._pool(spec.pool))
        described: dict[str, object] = {"runner": "spcs", "service": name, "compute_pool": spec.pool.upper(),
                                        "spec": doc}
        if self._settings.emulator:
            described["emulator"] = "jobgraph's local SPCS emulator (Podman), not Snowflake"
        described["statements"] = {
            "check_pools": render(show_compute_pools()),
            "submit": render(self._submit(spec, name, doc)),
            "poll": render(show_job_services(run_prefix(spec.run_id) + "%")),
            "why_failed": render(show_service_containers(name)),
            "logs": render(service_logs(name, "0", "main", self._settings.log_lines)),
            "cancel": render(drop_service(name)),
        }
        return described

    def handle_ref(self, handle: SpcsHandle) -> str:
        """The service's name: what the store records, and what `adopt` takes back."""
        return handle.name

    async def start(self, spec: JobSpec) -> SpcsHandle:
        """Submit the attempt's job service (ASYNC); a refusal is a RunnerError with Snowflake's reason. A cancel
        that arrives while it is submitted does not lose it: the service is dropped, then the cancel goes on."""
        name = service_name(spec)
        statement = self._submit(spec, name, job_spec(spec, self._settings, self._pool(spec.pool)))
        await self.open()
        submitting = asyncio.ensure_future(self._execute(statement, spec, name))
        try:
            await asyncio.shield(submitting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await submitting
                await self.cancel(self._watch(name, spec))
            raise
        return self._watch(name, spec)

    async def adopt(self, reference: str, spec: JobSpec) -> SpcsHandle:
        """Go on waiting for the service an earlier jobgraph submitted for this attempt, whatever it did since."""
        expected = service_name(spec)
        if reference != expected:
            raise RunnerError(f"{reference!r} is not the job service of {spec.task} attempt {spec.attempt} "
                              f"({expected})")
        await self._connect()  # recovery adopts (and cancels) with a runner it did not open
        handle = self._watch(reference, spec)
        handle.adopted = True
        return handle

    async def find(self, spec: JobSpec) -> str | None:
        """The attempt's service if Snowflake has it (submitted, but jobgraph died before recording its name)."""
        name = service_name(spec)
        rows = await self._run(show_job_services(name))
        mine = [row for row in rows if str(row.get("name", "")).upper() == name and
                str(row.get("comment") or "") == comment_for(spec)]
        return name if mine else None

    async def wait(self, handle: SpcsHandle) -> Outcome:
        """Wait until the poller has seen the service end; cancelling this leaves the service alone."""
        return await asyncio.shield(handle.outcome)

    async def logs(self, handle: SpcsHandle, tail_bytes: int) -> str:
        """The end of the attempt's output: its log once it ended, else what Snowflake has of it so far."""
        if handle.outcome.done():
            text = await asyncio.to_thread(tail, handle.spec.log_path, tail_bytes)
        else:
            try:
                text = await log_text(self._run, handle.name, "0", "main", self._settings.log_lines)
            except RunnerError:
                text = ""
        return redactor_for(handle.spec.secret_values).text(text)[-tail_bytes:]

    async def read_return_value(self, handle: SpcsHandle, max_bytes: int) -> str | None:
        """None: a job service has no return value (SPCS keeps none; SYSTEM$SET_RETURN_VALUE is for tasks)."""
        return None

    async def cancel(self, handle: SpcsHandle) -> None:
        """Drop the service, its log read first (what it printed so far; within a bounded wait, a failure to read
        it never holding the drop back). One that had already ended keeps its real end (read before it goes)."""
        handle.cancelled = True
        if handle.finishing and handle.reading is not None:  # a poll is reading how it ended: let it, first
            await asyncio.wait({handle.reading}, timeout=60)
        if not handle.outcome.done():  # a statement still in its thread when the wait ends goes on beside the DROP
            with contextlib.suppress(Exception):  # (the connector's connections are shared by threads: threadsafety 2)
                await asyncio.wait_for(self._before_drop(handle), spcs_reading.BEFORE_DROP_SECS)
        await self._run(drop_service(handle.name))
        self._watched.resolve(handle, Outcome(AttemptStatus.CANCELLED, None, f"cancelled by jobgraph (DROP SERVICE "
                                              f"{handle.name})"))

    async def aclose(self) -> None:
        """Stop polling and close the session. Services still running go on: the next jobgraph adopts them."""
        for task in [self._poller, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._poller = None
        self._watched.abandon("the spcs runner was closed; the job service goes on")
        if self._session is not None:
            session, self._session = self._session, None
            await asyncio.to_thread(session.close)

    async def _before_drop(self, handle: SpcsHandle) -> None:
        """Before a cancel drops the service: how it ended if it already did, else its log so far."""
        row = await status_row(self._run, handle.name)
        status = str((row or {}).get("status", "")).upper()
        if row is None or status in GONE:
            return
        if status in TERMINAL:
            handle.finishing = True
            await self._finish(handle, row, drop=False)
        else:
            await log_so_far(self._run, handle.spec, handle.name, self._settings.log_lines)

    def _pool(self, name: str) -> Pool | None:
        return self._pools.get(name.upper())

    def _submit(self, spec: JobSpec, name: str, doc: Mapping[str, object]) -> Statement:
        return execute_job_service(spec.pool, name, spec_yaml(doc), self._settings, comment_for(spec))

    async def _connect(self) -> SqlSession:
        async with self._connecting:
            if self._session is None:
                self._session = await asyncio.to_thread(connect, self._settings, self._images,
                                                        self._pipeline_pools, self._folder)
                if self._settings.emulator:
                    sys.stderr.write(EMULATOR_NOTE)
            return self._session

    async def _run(self, statement: Statement) -> list[dict[str, object]]:
        """One statement, in a worker thread, one at a time on the runner's session."""
        session = await self._connect()
        async with self._one_at_a_time:
            return await asyncio.to_thread(session.execute, statement.sql, statement.params)

    async def _execute(self, statement: Statement, spec: JobSpec, name: str) -> None:
        """Submit; a service of that name that is this attempt's (an earlier try whose answer was lost) is taken."""
        try:
            await self._run(statement)
        except RunnerError as exc:
            if "already exists" not in str(exc).lower() or await self.find(spec) != name:
                raise

    def _watch(self, name: str, spec: JobSpec) -> SpcsHandle:
        handle = self._watched.get(name)
        if handle is None:
            handle = SpcsHandle(name, spec, asyncio.get_running_loop().create_future())
            self._watched[name] = handle
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="jobgraph-spcs-poll")
        return handle

    def _pattern(self) -> str:
        """The LIKE pattern of one poll: the runs' common prefix (LIKE's `_` matches itself too)."""
        prefixes = {run_prefix(handle.spec.run_id) for handle in self._watched.values()}
        return (prefixes.pop() if len(prefixes) == 1 else PREFIX) + "%"

    async def _poll(self) -> None:
        """Every `poll_secs`, one SHOW for every watched service, until none is left."""
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        try:
            while self._watched:
                await asyncio.sleep(self._settings.poll_secs)
                try:
                    await self._poll_once()
                    failing_since = None
                except RunnerError as exc:
                    failing_since = loop.time() if failing_since is None else failing_since
                    if loop.time() - failing_since >= UNREACHABLE_SECS:
                        why = f"Snowflake did not answer for {UNREACHABLE_SECS:g}s: {exc}"
                        for handle in list(self._watched.values()):
                            self._watched.resolve(handle, Outcome(AttemptStatus.ERROR, None,
                                                                  f"{why}; job service {handle.name} may run on"))
                        return
        except Exception as exc:  # a bug must reach the waiters, not hang them
            self._watched.fail_all(f"following the job services failed: {exc!r}")

    async def _poll_once(self) -> None:
        self.polls += 1
        now = asyncio.get_running_loop().time()
        rows = await self._run(show_job_services(self._pattern()))
        listed = {str(row.get("name", "")).upper(): row for row in rows}
        for handle in list(self._watched.values()):
            if handle.finishing or handle.cancelled:
                continue
            row = listed.get(handle.name)
            if row is None:
                row = await status_row(self._run, handle.name) or {"name": handle.name, "status": "DELETED"}
            status = str(row.get("status", "")).upper()
            if status in WAITING:
                handle.adopted = False  # seen running: its end is seen within a poll, "now" is right
                if status != "PENDING":
                    handle.pending_since = None
                elif handle.pending_since is None:
                    handle.pending_since = now
                elif now - handle.pending_since >= self._settings.pending_limit_secs:
                    handle.finishing = True
                    self._spawn(handle, self._give_up(handle, row))
            elif status in TERMINAL:
                handle.finishing = True
                self._spawn(handle, self._finish(handle, row, drop=True))

    async def _finish(self, handle: SpcsHandle, row: Mapping[str, object], drop: bool) -> None:
        """Read how the ended service's attempt ended (its log saved), then drop it (all it had to say is in
        jobgraph's store now) unless a cancel drops it, and resolve."""
        outcome = await ended(self._run, handle.spec, handle.name, row, self._settings.log_lines,
                              by_jobgraph=handle.cancelled, adopted=handle.adopted)
        if drop and str(row.get("status", "")).upper() not in GONE and not handle.cancelled:
            with contextlib.suppress(RunnerError):
                await self._run(drop_service(handle.name))
        self._watched.resolve(handle, outcome)

    async def _give_up(self, handle: SpcsHandle, row: Mapping[str, object]) -> None:
        """End an attempt whose service stayed PENDING past the limit (dropped, SPCS's reason its error); one
        that started meanwhile is followed on."""
        try:
            outcome = await stuck(self._run, handle.spec, handle.name, row, self._settings.pending_limit_secs)
        except RunnerError:  # Snowflake did not answer: the next poll looks again
            outcome = None
        if outcome is None:
            handle.finishing = False
        else:
            self._watched.resolve(handle, outcome)

    def _spawn(self, handle: SpcsHandle, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._settle(handle, work))
        handle.reading = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, handle: SpcsHandle, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:  # the attempt ends whatever failed while reading how it ended
            self._watched.resolve(handle, Outcome(AttemptStatus.ERROR, None, f"reading how job service {handle.name} "
                                                  f"ended failed: {exc!r}"))


def needed_pools(pipeline: Pipeline) -> dict[str, list[str]]:
    """The compute pools the SPCS jobs use, each with its jobs: those whose runner is spcs, or every job when
    none is (the runner was chosen with --runner spcs)."""
    jobs = [job for job in pipeline.all_jobs() if job.runner == "spcs"] or pipeline.all_jobs()
    needed: dict[str, list[str]] = {}
    for job in jobs:
        needed.setdefault(job.pool or pipeline.defaults.pool, []).append(job.name)
    return needed


def build(_name: str, pipeline: Pipeline, settings: BaseModel | None, folder: Path,
          _cwd: Path | None) -> SpcsRunner:
    """The registry's constructor, with the pipeline's `runners.spcs` settings. Nothing is contacted (and the
    connector is not imported) until the runner is opened, so `jobgraph plan` builds it freely."""
    chosen = settings if isinstance(settings, SpcsSettings) else SpcsSettings()
    return SpcsRunner(chosen, pipeline.pools, needed_pools(pipeline), pipeline.container_images, folder)
