"""Notifications through `jobgraph run` with real processes: webhooks to a tiny HTTP server this test starts on
127.0.0.1 (one that records, one that fails then succeeds, one that never answers, a port nobody listens on),
command hooks, the store's rows, `show`, and a run never held up by a send beyond the notify timeout."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jobgraph.store import Store
from jobgraph.store.records import NotificationRecord
from tests.cli.test_imports import loaded_modules
from tests.conftest import WritePipeline, process_alive, sh

TOKEN = "T0KEN-s3cret-path-9f8e7d"
"""Part of the secret webhook URL: it must appear nowhere jobgraph writes or prints."""


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # a hundred sends at once are all taken, none left to the kernel's SYN retries


class Hooks:
    """The test's HTTP server: what each path received, and how each path answers."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[Any]] = {}
        self.hang = threading.Event()
        self.lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hooks.lock:
                    seen = hooks.bodies.setdefault(self.path, [])
                    seen.append(body)
                    count = len(seen)
                if self.path.startswith("/silent"):
                    hooks.hang.wait(60)  # never answers while the test runs
                    return
                fail = self.path.startswith("/flaky") and count == 1
                self.send_response(301 if self.path == "/moved" else 500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    server = Hooks()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.hang.set()
        server.server.shutdown()
        server.server.server_close()


def unreachable_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def jobgraph(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
             check: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in tmp_path with its own store, and `env` added to jobgraph's environment."""
    full = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250", **(env or {})}
    full.pop("JOBGRAPH_STORE", None)
    result = subprocess.run([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=full,
                            capture_output=True, text=True, timeout=120)
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


def stored(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / ".jobgraph" / "jobgraph.db") as db:
        return db.execute("SELECT event, task, target, state, tries, error FROM notifications ORDER BY id").fetchall()


def run_times(tmp_path: Path) -> tuple[datetime, datetime]:
    with sqlite3.connect(tmp_path / ".jobgraph" / "jobgraph.db") as db:
        started, finished = db.execute("SELECT started_at, finished_at FROM runs").fetchone()
    return (datetime.fromisoformat(started).replace(tzinfo=UTC), datetime.fromisoformat(finished).replace(tzinfo=UTC))


def test_webhooks_json_and_slack_with_a_retry_recorded_and_shown(
        tmp_path: Path, write_pipeline: WritePipeline, hooks: Hooks) -> None:
    secret_url = hooks.url(f"/flaky/{TOKEN}")
    write_pipeline({
        "notify": [{"on": ["run_failed", "job_failed"], "webhook": hooks.url("/ok/hook?key=abc")},
                   {"on": ["run_failed"], "webhook_secret": "TEAM_WEBHOOK", "format": "slack", "retries": 2},
                   {"on": ["run_succeeded"], "webhook": hooks.url("/never")},
                   {"on": ["job_failed"], "command": ["sh", "-c", "echo posting to $TEAM_WEBHOOK failed >&2; exit 1"],
                    "retries": 0}],
        "jobs": [sh("extract", "echo 'the table <raw> is missing' >&2; exit 3"), sh("load", "true"),
                 sh("report", "echo $TEAM_WEBHOOK; true", after=["load"])]})
    run = jobgraph(tmp_path, "run", "pipeline.yaml", env={"TEAM_WEBHOOK": secret_url}, check=1)

    json_bodies = sorted(hooks.bodies["/ok/hook?key=abc"], key=lambda body: str(body["event"]))
    assert [b["event"] for b in json_bodies] == ["job_failed", "run_failed"]  # in whichever order they arrived
    job_failed, run_failed = json_bodies
    assert job_failed["job"] == "extract" and job_failed["pipeline"] == "p" and job_failed["state"] == "RUNNING"
    assert "exit code 3" in job_failed["failed_jobs"][0]["error"]
    assert "the table <raw> is missing" in job_failed["failed_jobs"][0]["error"]
    assert run_failed["state"] == "FAILED" and run_failed["job"] is None and run_failed["failed_count"] == 1
    assert run_failed["run_id"] and run_failed["run_attempt"] == 1 and run_failed["trigger"] == "manual"
    slack = hooks.bodies[f"/flaky/{TOKEN}"]
    assert len(slack) == 2 and slack[0] == slack[1] and list(slack[1]) == ["text"]
    assert slack[1]["text"].startswith(f"run {run_failed['run_id'][:8]} of p FAILED (1 job failed)\n- extract: ")
    assert "&lt;raw&gt;" in slack[1]["text"]  # Slack's mrkdwn escapes
    assert "/never" not in hooks.bodies

    rows = stored(tmp_path)
    assert sorted(rows, key=str) == [
        ("job_failed", "extract", "command sh", "FAILED", 1, "sh exited with code 1: posting to *** failed"),
        ("job_failed", "extract", f"webhook http://127.0.0.1:{hooks.port}/...", "SENT", 1, None),
        ("run_failed", None, f"webhook http://127.0.0.1:{hooks.port}/...", "SENT", 1, None),
        ("run_failed", None, "webhook_secret TEAM_WEBHOOK", "SENT", 2, None)]

    show = jobgraph(tmp_path, "show", run_failed["run_id"], check=0).stdout
    assert "notifications" in show and "webhook_secret TEAM_WEBHOOK" in show and "job_failed" in show
    detail = json.loads(jobgraph(tmp_path, "show", run_failed["run_id"], "--format", "json", check=0).stdout)
    assert sorted(((n["event"], n["job"], n["state"], n["tries"]) for n in detail["notifications"]), key=str) == [
        ("job_failed", "extract", "FAILED", 1), ("job_failed", "extract", "SENT", 1), ("run_failed", None, "SENT", 1),
        ("run_failed", None, "SENT", 2)]
    assert detail["notifications"][0]["finished_at"].endswith("Z")

    # the secret URL: withheld from the jobs, never stored, logged or printed
    everything = run.stdout + run.stderr + show + json.dumps(detail)
    for path in (tmp_path / ".jobgraph").rglob("*"):
        if path.is_file():
            everything += path.read_bytes().decode("latin-1")
    assert TOKEN not in everything


def test_a_silent_server_and_an_unreachable_port_never_hold_up_the_run(
        tmp_path: Path, write_pipeline: WritePipeline, hooks: Hooks) -> None:
    timeout = 4.0
    write_pipeline({
        "notify": [{"on": ["job_failed", "run_failed"], "webhook": hooks.url("/silent"), "timeout": timeout},
                   {"on": ["run_failed"], "webhook": f"http://127.0.0.1:{unreachable_port()}/x", "retries": 2,
                    "timeout": timeout}],
        "defaults": {"pool_size": 1},
        "jobs": [sh("first", "exit 1"), sh("second", "sleep 0.2", after=[]), sh("third", "true", after=["second"])]})
    began = time.monotonic()
    jobgraph(tmp_path, "run", "pipeline.yaml", check=1)
    exited = datetime.now(UTC)
    took = time.monotonic() - began
    started, finished = run_times(tmp_path)
    # the job_failed send to a server that never answers began before `second` and `third` ran: they did not wait
    assert (finished - started).total_seconds() < timeout
    # at the end the run waited at most the timeout for its pending sends (plus the interpreter's exit)
    assert (exited - finished).total_seconds() < timeout + 2.0, took
    assert len(hooks.bodies["/silent"]) == 2
    rows = {(event, target.split(":")[-1]): (state, tries, error) for event, _, target, state, tries, error
            in stored(tmp_path)}
    state, tries, error = rows[("job_failed", f"{hooks.port}/...")]
    assert (state, tries) == ("FAILED", 1) and error == "no answer within the notify timeout of 4s"
    state, tries, error = rows[("run_failed", f"{hooks.port}/...")]
    assert (state, tries, error) == ("FAILED", 1, "no answer within the notify timeout of 4s")
    (key,) = [k for k in rows if k[0] == "run_failed" and k[1] != f"{hooks.port}/..."]
    state, tries, error = rows[key]
    assert (state, tries, error) == ("FAILED", 3, "cannot connect: Connection refused")


def test_a_run_whose_many_jobs_fail_sends_a_bounded_number_of_job_failed(
        tmp_path: Path, write_pipeline: WritePipeline, hooks: Hooks) -> None:
    write_pipeline({"notify": [{"on": ["job_failed", "run_failed"], "webhook": hooks.url("/ok"), "timeout": 30}],
                    "jobs": [sh(f"j{i}", "exit 1") for i in range(105)]})
    result = jobgraph(tmp_path, "run", "pipeline.yaml", check=1)
    assert "more than 100 jobs failed; no job_failed notification is sent for the others" in result.stdout + \
        result.stderr
    bodies = hooks.bodies["/ok"]
    assert sum(b["event"] == "job_failed" for b in bodies) == 100
    (run_failed,) = [b for b in bodies if b["event"] == "run_failed"]
    assert run_failed["failed_count"] == 105 and len(run_failed["failed_jobs"]) == 50
    assert run_failed["text"].count("\n- ") == 11 and run_failed["text"].endswith("- and 95 more")
    assert [row[3] for row in stored(tmp_path)] == ["SENT"] * 101


def test_hostile_and_odd_servers_fail_the_send_never_the_run(
        tmp_path: Path, write_pipeline: WritePipeline, hooks: Hooks) -> None:
    flood = socket.socket()
    flood.bind(("127.0.0.1", 0))
    flood.listen(8)

    def answer_forever() -> None:  # a first line that never ends (far past the stream's 64 KiB limit)
        with contextlib.suppress(OSError):
            while True:
                connection, _ = flood.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(b"H" * 200_000)

    threading.Thread(target=answer_forever, daemon=True).start()
    try:
        endless = f"http://127.0.0.1:{flood.getsockname()[1]}/"
        write_pipeline({
            "notify": [{"on": ["run_succeeded"], "webhook": endless, "retries": 0},
                       {"on": ["run_succeeded"], "webhook": f"https://127.0.0.1:{hooks.port}/ok", "retries": 0},
                       {"on": ["run_succeeded"], "webhook": f"http://127.0.0.1:{hooks.port}/moved", "retries": 0},
                       {"on": ["run_succeeded"], "webhook": "http://no-such-host.invalid/x", "retries": 0}],
            "jobs": [sh("only", "true")]})
        jobgraph(tmp_path, "run", "pipeline.yaml", check=0)
    finally:
        flood.close()
    rows = stored(tmp_path)
    assert len(rows) == 4 and all(state == "FAILED" for _, _, _, state, _, _ in rows)
    messages = sorted(error for *_, error in rows)
    assert messages[0] == "HTTP 301 Moved Permanently"  # a redirect is not followed
    assert messages[1].startswith("cannot connect: TLS failed")
    assert messages[2].startswith("cannot connect: the host name does not resolve")
    assert messages[3] == "the server's answer is not HTTP"
    assert "/moved" in hooks.bodies and "/ok" not in hooks.bodies


def test_command_hooks_get_the_json_on_stdin_and_one_that_overruns_is_killed_with_its_group(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    received = tmp_path / "received.json"
    pids = tmp_path / "pids"
    write_pipeline({
        "notify": [
            {"on": ["run_succeeded"], "command": [sys.executable, "-c",
                                                 f"import sys; open({str(received)!r}, 'w').write(sys.stdin.read())"]},
            {"on": ["run_succeeded"], "command": ["sh", "-c", f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; wait"],
             "timeout": 1},
            {"on": ["run_succeeded"], "command": ["sh", "-c", "cat > /dev/null; echo cannot reach pager >&2; exit 3"],
             "retries": 1},
            {"on": ["run_succeeded"], "command": [str(tmp_path / "no-such-hook")], "retries": 0}],
        "jobs": [sh("only", "true")]})
    jobgraph(tmp_path, "run", "pipeline.yaml", check=0)
    body = json.loads(received.read_text())
    assert body["event"] == "run_succeeded" and body["state"] == "SUCCEEDED" and body["failed_jobs"] == []
    assert body["text"].endswith(" of p SUCCEEDED")
    left = [int(pid) for pid in pids.read_text().split()]
    assert len(left) == 2 and not any(process_alive(pid) for pid in left)
    rows = stored(tmp_path)
    assert sorted((target, state, tries) for _, _, target, state, tries, _ in rows) == sorted([
        (f"command {os.path.basename(sys.executable)}", "SENT", 1), ("command sh", "FAILED", 1),
        ("command sh", "FAILED", 2), ("command no-such-hook", "FAILED", 1)])
    errors = {(target, tries): error for _, _, target, _, tries, error in rows}
    assert errors[("command sh", 2)] == "sh exited with code 3: cannot reach pager"
    assert "1s" in errors[("command sh", 1)]
    assert errors[("command no-such-hook", 1)].startswith(f"cannot run {tmp_path / 'no-such-hook'}: ")


@pytest.mark.parametrize(("notify", "env", "message"), [
    ({"webhook_secret": "NOT_SET_ANYWHERE"}, {}, "field 'notify.0.webhook_secret': NOT_SET_ANYWHERE is not set"),
    ({"webhook_secret": "HOOK"}, {"HOOK": f"ftp://example.invalid/{TOKEN}"},
     "HOOK does not hold an http:// or https:// URL (its value is not shown)"),
    ({"webhook_secret": "HOOK"}, {"HOOK": f"http://u:{TOKEN}@[::1/x"},
     "HOOK does not hold an http:// or https:// URL (its value is not shown)"),
    ({"webhook_secret": "HOOK"}, {"HOOK": f"http://u:{TOKEN}@example.invalid:99999/x"},
     "HOOK does not hold an http:// or https:// URL (its value is not shown)"),
    ({"webhook": "http://[::1/x"}, {}, "field 'notify.0.webhook': is not a URL"),
    ({"webhook": "http://example.invalid:99999/x"}, {}, "field 'notify.0.webhook': is not a URL"),
    ({"webhook": "ftp://example.invalid/x"}, {}, "must be an http:// or https:// URL with a host"),
    ({"webhook": "http://127.0.0.1/x", "command": ["true"]}, {}, "give exactly one of webhook, webhook_secret or "
     "command (got webhook, command)"),
    ({"on": ["run_crashed"], "webhook": "http://127.0.0.1/x"}, {}, "run_failed"),
    ({"command": ["true"], "format": "slack"}, {}, "format is for webhooks"),
    ({"webhook": "http://127.0.0.1/x", "timeout": "2h"}, {}, "notify"),
])
def test_bad_notify_entries_stop_the_run_before_anything_runs(
        tmp_path: Path, write_pipeline: WritePipeline, notify: dict[str, Any], env: dict[str, str],
        message: str) -> None:
    marker = tmp_path / "ran"
    write_pipeline({"notify": [notify], "jobs": [sh("only", f"touch {marker}")]})
    result = jobgraph(tmp_path, "run", "pipeline.yaml", env=env, check=2)
    assert message in result.stderr and "notify" in result.stderr and "Traceback" not in result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert not marker.exists()


def test_an_unquoted_yaml_on_key_is_the_events(tmp_path: Path, hooks: Hooks) -> None:
    (tmp_path / "pipeline.yaml").write_text(
        "name: p\nimages: {sh: [sh, -c]}\n"
        f"notify:\n  - on: [run_succeeded]\n    webhook: {hooks.url('/ok')}\n"
        "jobs:\n  - {name: only, image: sh, args: ['true']}\n")
    jobgraph(tmp_path, "run", "pipeline.yaml", check=0)
    assert [b["event"] for b in hooks.bodies["/ok"]] == ["run_succeeded"]


def test_only_a_pipeline_with_notify_loads_the_notifier(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    write_pipeline({"jobs": [sh("only", "true")]})
    result, modules = loaded_modules(tmp_path, "run", "pipeline.yaml")
    assert result.returncode == 0 and "jobgraph.app.notify" not in modules
    write_pipeline({"notify": [{"command": ["true"]}], "jobs": [sh("only", "true")]})
    result, modules = loaded_modules(tmp_path, "run", "pipeline.yaml")
    assert result.returncode == 0 and "jobgraph.app.notify" in modules


def test_the_store_records_and_lists_notifications_on_every_backend(any_store_url: str) -> None:
    from jobgraph.engine.events import RunStarted

    with Store(any_store_url) as records:
        at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        records.record(RunStarted("r1", "p", at, at, (), "{}"))
        records.record_notification(NotificationRecord("r1", "p", "run_failed", None, "webhook_secret X", "FAILED", 3,
                                                       "HTTP 500", at, at))
        records.record_notification(NotificationRecord("r1", "p", "job_failed", "j", "command sh", "SENT", 1, None,
                                                       at, None))
        assert [(n.event, n.task, n.target, n.state, n.tries, n.error, n.created_at, n.finished_at)
                for n in records.notifications("r1")] == [
            ("run_failed", None, "webhook_secret X", "FAILED", 3, "HTTP 500", at, at),
            ("job_failed", "j", "command sh", "SENT", 1, None, at, None)]


DAEMON = ("import os, signal, sys, time\n"
          "if os.fork() == 0:\n"
          "    os.setsid()\n"
          "    if os.fork() == 0:\n"
          "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
          "        os.environ.clear()\n"
          "        open(sys.argv[1], 'a').write(f'{os.getpid()}\\n')\n"
          "        os.closerange(0, 256)\n"
          "        time.sleep(300)\n"
          "    os._exit(0)\n"
          "os.wait()\n"
          "if sys.argv[2] == 'hang':\n"
          "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
          "    open(sys.argv[1], 'a').write(f'{os.getpid()}\\n')\n"
          "    time.sleep(300)\n")
"""A hook that leaves a daemon behind: a double fork into a session of its own, SIGTERM ignored, no environment,
no descriptors; then it exits (`done`) or hangs past its timeout ignoring SIGTERM (`hang`, its pid written too)."""


def test_a_daemon_a_command_hook_starts_does_not_outlive_it(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    pids = tmp_path / "daemons"
    write_pipeline({
        "notify": [
            {"on": ["run_succeeded"], "command": [sys.executable, "-c", DAEMON, str(pids), "done"]},
            {"on": ["run_succeeded"], "command": [sys.executable, "-c", DAEMON, str(pids), "hang"], "timeout": 2}],
        "jobs": [sh("only", "true")]})
    jobgraph(tmp_path, "run", "pipeline.yaml", check=0)
    left = [int(pid) for pid in pids.read_text().split()]
    assert len(left) == 3
    deadline = time.monotonic() + 5  # the reaper's SIGKILL is sent before jobgraph exits; let the kernel finish it
    while any(process_alive(pid) for pid in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(pid) for pid in left)
    states = sorted((state, error) for _, _, _, state, _, error in stored(tmp_path))
    assert states == [("FAILED", "no answer within the notify timeout of 2s"), ("SENT", None)]


def test_a_hook_does_not_outlive_a_jobgraph_killed_9(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    pids = tmp_path / "daemons"
    write_pipeline({
        "notify": [{"on": ["run_succeeded"], "command": [sys.executable, "-c", DAEMON, str(pids), "hang"],
                    "timeout": 120}],
        "jobs": [sh("only", "true")]})
    full = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    full.pop("JOBGRAPH_STORE", None)
    run = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", "pipeline.yaml"], cwd=tmp_path, env=full,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.05)
    finally:
        run.kill()
        run.wait()
    left = [int(pid) for pid in pids.read_text().split()]
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(left) == 2 and not any(process_alive(pid) for pid in left)
