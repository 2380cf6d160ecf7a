"""Telling people about a run: the pipeline's `notify` targets, sent by a listener of the run's events.

A `Notifier` hears the run's events after the store recorded them (a non-essential listener), and
for each `notify` entry whose `on` names what happened (run_failed, run_succeeded, job_failed) starts
a send as its own asyncio task: the run never waits for one. A send is a POST (JSON, or Slack's
`{"text": ...}`) over the standard library's asyncio streams, or a command hook fed the JSON on its
stdin, in a session of its own so that a hook that overruns is killed with its whole process group.
Each send gets `timeout` seconds, every try and backoff included; at the end of `jobgraph run` the
run waits for pending sends at most that long (`settle`). Each send's outcome (SENT / FAILED, tries,
error) is recorded in the store's `notifications` table. The URL named by `webhook_secret` is never
stored, shown or put in an error: the target reads `webhook_secret NAME`, errors are redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from jobgraph.config.model import Pipeline
from jobgraph.config.run_settings import Notify
from jobgraph.engine.events import Event, RunEnded, RunStarted, TaskChanged
from jobgraph.errors import ConfigError, Problem
from jobgraph.runners.redaction import redactor_for, stored_text
from jobgraph.states import RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.records import NOTIFICATION_FAILED, NOTIFICATION_SENT, NotificationRecord

BACKOFF_SECS = 0.5
"""The pause after a first failed try; it doubles after each (within the notification's timeout)."""

ERROR_CHARS = 1000
"""The most of one job's error a notification carries, and of a send's error the store keeps."""

MAX_LISTED_JOBS = 50
"""The most failed jobs one notification lists (a 10,000-job run that failed whole stays a short message)."""

MAX_JOB_FAILED_SENDS = 100
"""The most job_failed notifications one entry sends per run: a run whose 10,000 jobs fail tells of the first
hundred one by one (then says so once, as a warning), and run_failed counts them all."""

SETTLE_GRACE_SECS = 0.5
"""How long past the last send's own deadline the run's end waits for it to record how it ended (each send
stops trying at its deadline by itself: this only covers writing its row)."""

HOOK_STDERR_BYTES = 2048
"""How much of a failing hook's stderr (its end) is kept as the send's error."""
HOOK_STOP_SECS = 2.0
"""How long a hook past its timeout has to be gone after SIGTERM (hook_reaper needs milliseconds) before SIGKILL."""


class SendError(Exception):
    """One try failed; the message says how, without the URL."""


@dataclass
class _Run:
    """What the notifier has heard of the run so far."""

    run_id: str = ""
    pipeline: str = ""
    run_attempt: int = 1
    trigger: str = "manual"
    started_at: datetime | None = None


def webhook_urls(pipeline: Pipeline, environ: Mapping[str, str] | None = None) -> dict[int, str]:
    """Each `notify` entry's webhook URL (by its index), `webhook_secret`s read from jobgraph's environment;
    a secret that is not set, or is not an http(s) URL, stops the run before anything runs (ConfigError)."""
    environ = os.environ if environ is None else environ
    urls: dict[int, str] = {}
    problems: list[Problem] = []
    for index, entry in enumerate(pipeline.notify):
        if entry.webhook is not None:
            urls[index] = entry.webhook
        elif entry.webhook_secret is not None:
            url = environ.get(entry.webhook_secret)
            if url is None:
                problems.append(Problem(f"{entry.webhook_secret} is not set in jobgraph's environment",
                                        field=f"notify.{index}.webhook_secret"))
            elif not _is_http_url(url):
                problems.append(Problem(f"{entry.webhook_secret} does not hold an http:// or https:// URL "
                                        "(its value is not shown)", field=f"notify.{index}.webhook_secret"))
            else:
                urls[index] = url
    if problems:
        raise ConfigError(f"pipeline {pipeline.name}", problems)
    return urls


def _is_http_url(url: str) -> bool:
    """Whether `url` is an http(s) URL with a host and a port a socket takes (urlsplit raises on `[::1`, `:99999`)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number or out of range)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c in url for c in "\r\n\x00 ")


def target_of(entry: Notify) -> str:
    """Whom a notification goes to, as stored and shown: never a secret URL, nor a webhook's path or query
    (Slack's and most services' URLs carry their token there)."""
    if entry.webhook_secret is not None:
        return f"webhook_secret {entry.webhook_secret}"
    if entry.webhook is not None:
        parts = urlsplit(entry.webhook)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
        return f"webhook {parts.scheme}://{host}{port}/..."[:255]
    assert entry.command is not None
    return f"command {os.path.basename(entry.command[0])}"[:255]


class Notifier:
    """A listener of one run's events that sends its `notify` entries; `settle` waits for what is pending."""

    def __init__(self, records: Store, pipeline: Pipeline, warn: Callable[[str], None],
                 secret_values: frozenset[str] = frozenset(), environ: Mapping[str, str] | None = None) -> None:
        self._records = records
        self._entries = pipeline.notify
        self._urls = webhook_urls(pipeline, environ)
        self._warn = warn
        self._redactor = redactor_for(frozenset(v for v in (*secret_values, *self._urls.values()) if v))
        self._run = _Run(pipeline=pipeline.name)
        self._failed: dict[str, str] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self._deadlines: dict[asyncio.Task[None], float] = {}

    @property
    def secret_env(self) -> dict[str, str]:
        """The `webhook_secret` variables and their URLs: a run withholds them from its jobs and redacts them."""
        return {entry.webhook_secret: self._urls[i] for i, entry in enumerate(self._entries)
                if entry.webhook_secret is not None}

    def __call__(self, event: Event) -> None:
        """Hear one event; start the sends it calls for. Never raises, never waits."""
        try:
            self._hear(event)
        except Exception as exc:  # a notification must never stop a run
            self._warn(f"notify: {exc!r}")

    def _hear(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._run = _Run(event.run_id, event.pipeline, event.run_attempt, event.trigger, event.at)
        elif isinstance(event, TaskChanged) and event.state == TaskState.FAILED:
            self._failed[event.task] = event.reason or ""
            if len(self._failed) <= MAX_JOB_FAILED_SENDS:
                self._start("job_failed", event.at, job=event.task)
            elif len(self._failed) == MAX_JOB_FAILED_SENDS + 1 and any("job_failed" in e.on for e in self._entries):
                self._warn(f"notify: more than {MAX_JOB_FAILED_SENDS} jobs failed; no job_failed notification is sent "
                           "for the others (run_failed counts them all)")
        elif isinstance(event, RunEnded) and event.state in (RunState.FAILED, RunState.SUCCEEDED):
            kind = "run_failed" if event.state == RunState.FAILED else "run_succeeded"
            self._start(kind, event.at, state=event.state)

    def _start(self, kind: str, at: datetime, job: str | None = None, state: RunState = RunState.RUNNING) -> None:
        wanted = [(i, entry) for i, entry in enumerate(self._entries) if kind in entry.on]
        if not wanted:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # events delivered outside a loop (a run that never started): nothing to send
            return
        body = self._body(kind, at, job, state)
        for index, entry in wanted:
            deadline = loop.time() + entry.timeout
            send = loop.create_task(self._send(index, entry, kind, job, body, deadline), name=f"jobgraph notify {kind}")
            self._sends.add(send)
            self._deadlines[send] = deadline
            send.add_done_callback(self._forget)

    def _forget(self, send: asyncio.Task[None]) -> None:
        self._sends.discard(send)
        self._deadlines.pop(send, None)

    async def settle(self) -> None:
        """Wait for the sends still pending, each at most until its own timeout is over; give up on the rest
        (recorded as FAILED). `jobgraph run` calls this at the run's end, before its event loop closes."""
        if not self._sends:
            return
        loop = asyncio.get_running_loop()
        wait = max(self._deadlines.values()) + SETTLE_GRACE_SECS - loop.time()
        _, late = await asyncio.wait(set(self._sends), timeout=max(0.0, wait))
        for send in late:
            send.cancel()
        if late:
            await asyncio.wait(late)

    def _body(self, kind: str, at: datetime, job: str | None, state: RunState) -> dict[str, Any]:
        run = self._run
        failed = [{"job": name, "error": reason[:ERROR_CHARS]} for name, reason in self._failed.items()]
        listed = failed if job is None else [f for f in failed if f["job"] == job]
        body: dict[str, Any] = {
            "event": kind, "run_id": run.run_id, "pipeline": run.pipeline, "run_attempt": run.run_attempt,
            "trigger": run.trigger, "state": str(state), "job": job,
            "started_at": run.started_at.isoformat() if run.started_at else None, "at": at.isoformat(),
            "failed_jobs": listed[:MAX_LISTED_JOBS], "failed_count": len(listed),
        }
        body["text"] = _text(body)
        return body

    async def _send(self, index: int, entry: Notify, kind: str, job: str | None, body: dict[str, Any],
                    deadline: float) -> None:
        """Try, back off, try again, until `deadline` (the loop's time): the entry's timeout from when the event
        happened; record how it ended, whatever happens."""
        created = datetime.now(UTC)
        loop = asyncio.get_running_loop()
        payload = json.dumps({"text": body["text"]} if entry.format == "slack" else body).encode()
        tries = 0
        error: str | None = None
        try:
            while True:
                tries += 1
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        if entry.command is not None:
                            await run_hook(entry.command, payload)
                        else:
                            await post(self._urls[index], payload)
                    error = None
                    break
                except TimeoutError:
                    error = f"no answer within the notify timeout of {entry.timeout:g}s"
                except SendError as exc:
                    error = str(exc)
                except Exception as exc:  # a bug, or a case not foreseen: a failed try, never a lost record
                    error = f"internal error: {type(exc).__name__}"
                pause = BACKOFF_SECS * 2 ** (tries - 1)
                if tries > entry.retries or loop.time() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
        except asyncio.CancelledError:
            error = (f"{error}; " if error else "") + f"given up when the run ended ({entry.timeout:g}s timeout)"
            raise
        finally:
            self._record(NotificationRecord(
                self._run.run_id, self._run.pipeline, kind, job, target_of(entry),
                NOTIFICATION_SENT if error is None else NOTIFICATION_FAILED, tries,
                None if error is None else stored_text(error, self._redactor)[:ERROR_CHARS],
                created, datetime.now(UTC)))

    def _record(self, record: NotificationRecord) -> None:
        try:
            self._records.record_notification(record)
        except Exception as exc:  # the store's fault, or a refused row: said, never raised into the loop
            self._warn(f"the {record.event} notification to {record.target} ({record.state}) could not be "
                       f"recorded: {exc}")


def _text(body: Mapping[str, Any]) -> str:
    """One line or a few a person reads in Slack or a mail: what happened, where, and the failed jobs' errors."""
    run = f"run {str(body['run_id'])[:8]} of {body['pipeline']}"
    if body["event"] == "job_failed":
        head = f"job {body['job']} failed in {run}"
    elif body["event"] == "run_failed":
        head = f"{run} FAILED ({body['failed_count']} job{'s' if body['failed_count'] != 1 else ''} failed)"
    else:
        head = f"{run} SUCCEEDED"
    lines = [head] + [f"- {f['job']}: {f['error'].splitlines()[0] if f['error'] else 'failed'}"[:300]
                      for f in body["failed_jobs"][:10]]
    if body["failed_count"] > 10:
        lines.append(f"- and {body['failed_count'] - 10} more")
    return "\n".join(lines).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def post(url: str, payload: bytes) -> None:
    """POST `payload` as JSON to `url` (HTTP/1.1, one connection, no redirect followed); SendError unless 2xx."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    context = None
    if https:
        import ssl  # only an https webhook needs it

        context = ssl.create_default_context()
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except OSError as exc:
        raise SendError(f"cannot connect: {_why(exc)}") from None
    try:
        path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~") + (
            "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?") if parts.query else "")
        shown_host = f"[{host}]" if ":" in host else host if host.isascii() else host.encode("idna").decode("ascii")
        if parts.port:
            shown_host += f":{parts.port}"
        head = (f"POST {path} HTTP/1.1\r\nHost: {shown_host}\r\nUser-Agent: jobgraph\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("ascii") + payload)
        await writer.drain()
        status = await reader.readline()
    except OSError as exc:
        raise SendError(f"the connection failed: {_why(exc)}") from None
    except ValueError:  # a first line longer than the stream's limit (64 KiB)
        raise SendError("the server's answer is not HTTP") from None
    finally:
        writer.close()  # not awaited: an await here would meet the timeout's cancel a second time
    words = status.decode("latin-1").split()
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise SendError("the server's answer is not HTTP" if status else "the server closed without answering")
    code = int(words[1])
    if not 200 <= code < 300:
        raise SendError(f"HTTP {code}" + (f" {' '.join(words[2:])[:60]}" if len(words) > 2 else ""))


def _why(exc: OSError) -> str:
    """An OS error in words that name no address (asyncio's own messages carry the host and port)."""
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror})"
    if isinstance(exc, ssl_errors()):
        return f"TLS failed ({getattr(exc, 'reason', None) or type(exc).__name__})"
    if exc.errno:
        return os.strerror(exc.errno)
    return type(exc).__name__


def ssl_errors() -> tuple[type[Exception], ...]:
    """ssl's errors if an https webhook loaded ssl, else none to match."""
    ssl = sys.modules.get("ssl")
    return (ssl.SSLError, ssl.CertificateError) if ssl is not None else ()


async def run_hook(argv: tuple[str, ...], payload: bytes) -> None:
    """Run a command hook with `payload` on its stdin, in a session of its own under hook_reaper (so no daemon it
    starts outlives it); SendError unless it exits 0.

    Cancelled (its timeout), the reaper gets SIGTERM and kills every process of the hook; one that does not end
    within HOOK_STOP_SECS is killed with its whole process group. Either is waited for before the cancel goes on.
    """
    from jobgraph.app import hook_reaper

    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", hook_reaper.__name__, *argv, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            env={**os.environ, hook_reaper.PARENT_VARIABLE: str(os.getpid())})
    except OSError as exc:
        raise SendError(f"cannot run {argv[0]}: {exc.strerror or type(exc).__name__}") from None
    try:
        assert process.stdin is not None and process.stderr is not None
        with contextlib.suppress(OSError):  # a hook that does not read its stdin is its own business
            process.stdin.write(payload)
            await process.stdin.drain()
        process.stdin.close()
        tail = b""
        while chunk := await process.stderr.read(65536):
            tail = (tail + chunk)[-HOOK_STDERR_BYTES:]
        code = await process.wait()
    except BaseException:
        await asyncio.shield(_stop_hook(process))
        raise
    last = tail.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    if code == hook_reaper.CANNOT_RUN and last[0].startswith(hook_reaper.CANNOT_RUN_PREFIX):
        raise SendError(f"cannot run {argv[0]}: {last[0].removeprefix(hook_reaper.CANNOT_RUN_PREFIX)}")
    if code != 0:
        raise SendError(f"{argv[0]} exited with code {code}" + (f": {last[0][:300]}" if last[0] else ""))


async def _stop_hook(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the reaper (it kills the hook's processes, daemons included); SIGKILL to its group if it lingers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), HOOK_STOP_SECS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
