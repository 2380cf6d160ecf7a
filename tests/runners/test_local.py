"""The local runner's output as a user meets it through `jobgraph`: what a hostile or noisy job cannot do.

A job may plant links where jobgraph reads or writes, turn its return file into a FIFO, print
gigabytes or NUL bytes, and print its secrets. jobgraph's records, the host's files and jobgraph's
own memory must not care.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobgraph.store import Store
from tests.conftest import Cli, WritePipeline, peak_rss_mib, process_alive, sh, store_url, with_peak_rss

SECRET = "s3cr3t-value"
PEM = ("-----BEGIN PRIVATE KEY-----\n"
       "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKB\n"
       "UnlGmPaGdRlpRwqZr2LWnUVPqGkTRB9yCvzqxUwqjQIDAQABAoIBAQCRbLPjsYLo\n"
       "AB==\n"
       "-----END PRIVATE KEY-----")
LOG = '"$(dirname "$JOBGRAPH_RETURN_VALUE_FILE")/attempt-1.log"'
"""In a job's shell: the path of its own log, which it could try to replace."""


def jobgraph(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start the real `jobgraph` in tmp_path, as the `cli` fixture does, but in the background."""
    full = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250", **(env or {})}
    full.pop("JOBGRAPH_STORE", None)
    return subprocess.Popen([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def only_run(tmp_path: Path) -> str:
    return Store(store_url(tmp_path)).runs(1)[0].run_id


def test_links_planted_for_the_return_value_and_the_log_touch_no_host_file(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    host = tmp_path / "host-file"
    host.write_text(f"HOST FILE holding {SECRET}\n")
    monkeypatch.setenv("API_TOKEN", SECRET)
    path = write_pipeline({"jobs": [
        sh("steals", f'ln -s {host} "$JOBGRAPH_RETURN_VALUE_FILE"'),
        sh("relinks", f'echo first; rm -f {LOG}; ln -s {host} {LOG}; echo "token $API_TOKEN"; exit 1',
           secrets=["API_TOKEN"]),
    ]})
    cli("run", str(path), check=1)
    assert host.read_text() == f"HOST FILE holding {SECRET}\n"
    store = Store(store_url(tmp_path))
    run_id = store.runs(1)[0].run_id
    tasks = {t.task: t for t in store.tasks(run_id)}
    assert tasks["steals"].state == "SUCCEEDED" and tasks["steals"].return_value is None
    attempt = store.attempts(run_id, "relinks")[0]
    assert attempt.status == "FAILED" and "HOST FILE" not in (attempt.error or "")
    assert "HOST FILE" not in (tasks["relinks"].error_message or "")
    shown = cli("logs", run_id, "relinks", check=2)
    assert "is not a regular file" in shown.stderr and "HOST FILE" not in shown.stdout + shown.stderr


@pytest.mark.parametrize(("plant", "value"), [
    ('mkfifo "$JOBGRAPH_RETURN_VALUE_FILE"', None),
    ('ln -s /dev/zero "$JOBGRAPH_RETURN_VALUE_FILE"', None),
    ('truncate -s 5G "$JOBGRAPH_RETURN_VALUE_FILE"', "\ufffd" * 10_000),
])
def test_a_fifo_device_or_huge_return_file_freezes_nothing(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, plant: str, value: str | None) -> None:
    """Read without blocking, never through a link, at most 10 kB, and NULs stored as U+FFFD."""
    path = write_pipeline({"jobs": [sh("plants", plant), sh("slow", "sleep 60", timeout=2)]})
    started = time.monotonic()
    cli("run", str(path), check=1, timeout=60)
    assert time.monotonic() - started < 30
    store = Store(store_url(tmp_path))
    run_id = store.runs(1)[0].run_id
    tasks = {t.task: t for t in store.tasks(run_id)}
    assert tasks["plants"].state == "SUCCEEDED" and tasks["plants"].return_value == value
    assert [a.status for a in store.attempts(run_id, "slow")] == ["TIMEOUT"]


def test_ctrl_c_works_after_a_job_left_a_fifo(tmp_path: Path, write_pipeline: WritePipeline) -> None:
    pid_file = tmp_path / "pid"
    path = write_pipeline({"jobs": [sh("plants", 'mkfifo "$JOBGRAPH_RETURN_VALUE_FILE"'),
                                    sh("waits", f"echo $$ > {pid_file}; sleep 60", after=["plants"])]})
    process = jobgraph(tmp_path, "run", str(path))
    try:
        wait_for(pid_file.exists)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    finally:
        process.kill()  # harmless once it ended; a frozen jobgraph must not outlive the test
        process.wait()
    assert process.returncode == 130
    store = Store(store_url(tmp_path))
    assert store.runs(1)[0].state == "CANCELLED"
    assert not process_alive(int(pid_file.read_text()))


def test_the_log_is_capped_with_a_note_and_the_job_runs_on(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    marker = tmp_path / "went-on"
    path = write_pipeline({"defaults": {"log_limit": "1m"}, "jobs": [
        sh("noisy", f'head -c 5000000 /dev/zero | tr "\\000" x; echo; echo done > {marker}; '
               'printf finished > "$JOBGRAPH_RETURN_VALUE_FILE"'),
        sh("small", "echo hello", log_limit="2k")]})
    cli("run", str(path), check=0)
    store = Store(store_url(tmp_path))
    run_id = store.runs(1)[0].run_id
    log = store.attempts(run_id, "noisy")[0].log_path
    assert marker.read_text() == "done\n"
    assert {t.task: t.return_value for t in store.tasks(run_id)}["noisy"] == "finished"
    content = log.read_bytes()
    assert content.count(b"x") == 1 << 20 and len(content) < (1 << 20) + 200
    assert content.endswith(b"[jobgraph: the log reached its limit of 1 MiB (log_limit); "
                            b"the rest of the job's output is not stored]\n")
    assert store.attempts(run_id, "small")[0].log_path.read_text() == "hello\n"


def test_a_bad_log_limit_is_refused_with_file_job_and_field(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"jobs": [sh("a", "true", log_limit="lots"), sh("b", "true", log_limit=10)]})
    result = cli("run", str(path), check=2)
    assert "job 'a', field 'log_limit'" in result.stderr and "'lots' is not a memory size" in result.stderr
    assert "job 'b', field 'log_limit'" in result.stderr and "at least 1k" in result.stderr
    assert not (tmp_path / ".jobgraph" / "logs").exists()


def test_a_running_jobs_log_never_shows_its_secret_even_cut_in_two(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", SECRET)
    half = tmp_path / "half"
    script = (f'echo "token $API_TOKEN"; printf "split %s" "${{API_TOKEN%???????}}"; touch {half}; sleep 3; '
              'printf "%s\\n" "${API_TOKEN#?????}"; sleep 60')
    path = write_pipeline({"jobs": [sh("leaky", script, secrets=["API_TOKEN"], timeout=8)]})
    process = jobgraph(tmp_path, "run", str(path))
    try:
        wait_for(half.exists)
        time.sleep(0.5)
        while_split = cli("logs", only_run(tmp_path), "leaky", check=0).stdout
        assert "token ***" in while_split and SECRET not in while_split and "s3cr3" not in while_split
        time.sleep(3)
        whole = cli("logs", only_run(tmp_path), "leaky", check=0).stdout
        assert "split ***" in whole and "s3cr" not in whole and "t-value" not in whole
    finally:
        process.communicate(timeout=60)


def test_after_kill_9_of_jobgraph_the_log_holds_no_secret(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    pid_file = tmp_path / "pid"
    path = write_pipeline({"jobs": [sh("leaky", f'echo "token $API_TOKEN"; echo $$ > {pid_file}; sleep 60',
                                       secrets=["API_TOKEN"])]})
    process = jobgraph(tmp_path, "run", str(path), env={"API_TOKEN": SECRET})
    wait_for(pid_file.exists)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    job = int(pid_file.read_text())
    try:
        logs = list((tmp_path / ".jobgraph" / "logs").glob("*/leaky/attempt-1.log"))
        assert [log.read_text() for log in logs] == ["token ***\n"]
    finally:
        os.killpg(job, signal.SIGKILL)


def test_a_multi_line_secret_leaks_nowhere_line_by_line(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PEM key printed line by line, as a return value and in the error: hidden in logs, store, show, stats."""
    monkeypatch.setenv("PRIVATE_KEY", PEM)
    script = ('echo "$PRIVATE_KEY" | while read -r line; do echo "got: $line"; done; '
              'printf "%s" "$PRIVATE_KEY" > "$JOBGRAPH_RETURN_VALUE_FILE"; exit 1')
    returns = 'echo "$PRIVATE_KEY" | tail -n 3 > "$JOBGRAPH_RETURN_VALUE_FILE"'
    path = write_pipeline({"jobs": [sh("prints", script, secrets=["PRIVATE_KEY"]),
                                    sh("returns", returns, secrets=["PRIVATE_KEY"])]})
    cli("run", str(path), check=1)
    run_id = only_run(tmp_path)
    secret_lines = [line for line in PEM.splitlines() if len(line) >= 4]
    seen = [cli("show", run_id, check=0).stdout, cli("logs", run_id, "prints", check=0).stdout,
            cli("stats", "jobs_run_stats", check=0).stdout, cli("stats", "task_logging_stats", check=0).stdout]
    store = Store(store_url(tmp_path))
    seen += [a.error or "" for a in store.attempts(run_id)]
    seen += [(t.error_message or "") + (t.return_value or "") for t in store.tasks(run_id)]
    folder = tmp_path / ".jobgraph" / "logs" / run_id
    seen += [p.read_text() for p in folder.rglob("*") if p.is_file()]
    for text in seen:
        assert not [line for line in secret_lines if line in text], text
    assert "got: ***" in seen[1]
    assert {t.task: t.return_value for t in store.tasks(run_id)}["returns"] == "***\n***\n***"
    assert (folder / "prints" / "attempt-1.return").read_text() == "***"


def test_nul_bytes_in_output_and_return_values_are_stored_on_every_backend(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, any_store_url: str) -> None:
    path = write_pipeline({"jobs": [sh("returns", 'printf "a\\000b" > "$JOBGRAPH_RETURN_VALUE_FILE"; '
                                                  'printf "out\\000put\\n"'),
                                    sh("fails", 'printf "bad\\000output\\n"; exit 3')]})
    result = cli("run", str(path), "--store", any_store_url, check=1)
    assert "internal error" not in result.stdout + result.stderr
    with Store(any_store_url) as store:
        run = store.runs(1)[0]
        tasks = {t.task: t for t in store.tasks(run.run_id)}
        attempts = {a.task: a for a in store.attempts(run.run_id)}
    assert run.state == "FAILED"
    assert tasks["returns"].state == "SUCCEEDED" and tasks["returns"].return_value == "a\ufffdb"
    assert tasks["fails"].state == "FAILED" and attempts["fails"].status == "FAILED"
    assert "bad\ufffdoutput" in (attempts["fails"].error or "")
    assert {a.status for a in attempts.values()} == {"DONE", "FAILED"}
    assert attempts["returns"].log_path.read_bytes() == b"out\x00put\n"


def test_memory_stays_flat_while_a_secret_is_redacted_from_a_big_log(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    path = write_pipeline({"defaults": {"log_limit": "1g"}, "jobs": [
        sh("chatty", 'yes "a line with $API_TOKEN in it" | head -c 200000000', secrets=["API_TOKEN"])]})
    full = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "API_TOKEN": SECRET}
    full.pop("JOBGRAPH_STORE", None)
    report = tmp_path / "peak-rss"
    done = subprocess.run(with_peak_rss([sys.executable, "-m", "jobgraph", "run", str(path)], report), cwd=tmp_path,
                          env=full, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    peak = peak_rss_mib(report)
    log = next((tmp_path / ".jobgraph" / "logs").glob("*/chatty/attempt-1.log"))
    assert log.stat().st_size > 100_000_000
    with log.open("rb") as file:
        while chunk := file.read(1 << 24):
            assert SECRET.encode() not in chunk
    assert peak < 200, f"jobgraph run peaked at {peak:.0f} MiB"
