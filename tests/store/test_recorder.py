"""A run whose store fails under it (a full disk, a PostgreSQL server that stops or restarts): the records survive.

Each test breaks a real store in the middle of a real `jobgraph run`: the disk is a small tmpfs that a
job fills, the PostgreSQL server is a throwaway cluster of the test's own that a job stops.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobgraph.engine import AttemptStarted, Event, RunEnded, RunStarted, TaskChanged, TaskInfo
from jobgraph.states import RunState, TaskState
from jobgraph.store import Store
from jobgraph.store.faults import StoreFault
from jobgraph.store.recorder import RunRecorder
from jobgraph.store.sql_records import SqlStore
from tests.conftest import _free_port, sh

PATIENCE = {"JOBGRAPH_STORE_PATIENCE": "30"}


def jobgraph(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `jobgraph` in tmp_path, with its logs there (the store is given by --store)."""
    full = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=full, capture_output=True,
                            text=True, timeout=180)
    result.stderr = result.stderr.replace("\n", " ")  # messages as one line, however the terminal wrapped them
    return result


def pipeline(tmp_path: Path, jobs: list[dict[str, object]]) -> str:
    path = tmp_path / "pipeline.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"name": "p", "images": {"sh": ["sh", "-c"]}, "defaults": {"pool_size": 4},
                                    "jobs": jobs}))
    return str(path)


def assert_every_record_ended(store: Store, run_id: str) -> None:
    assert store.run(run_id).state != "RUNNING"
    assert all(t.state not in ("PENDING", "QUEUED", "RUNNING") for t in store.tasks(run_id))
    assert all(a.status != "RUNNING" for a in store.attempts(run_id))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs that a job can fill; unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def test_a_full_disk_mid_run_pauses_the_run_until_space_is_freed(tmp_path: Path, small_disk: Path) -> None:
    filler, filled = small_disk / "filler", tmp_path / "filled"
    url = f"sqlite:///{small_disk / 'store.db'}"
    path = pipeline(tmp_path, [
        sh("fill", f"dd if=/dev/zero of={filler} bs=64k 2>/dev/null; touch {filled}"),
        sh("free", f"while [ ! -e {filled} ]; do sleep 0.05; done; sleep 1; rm {filler}"),
        sh("last", "true", after=["fill", "free"]),
    ])
    result = jobgraph(tmp_path, "run", path, "--store", url, env=PATIENCE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"warning: the disk holding the store {small_disk / 'store.db'} is full (" in result.stderr
    assert "the run waits up to 30s for the store" in result.stderr and "the store is back" in result.stderr
    assert "Traceback" not in result.stderr
    store = Store(url)
    run = store.runs(1)[0]
    assert run.state == "SUCCEEDED"
    assert {t.task: t.state for t in store.tasks(run.run_id)} == dict.fromkeys(("fill", "free", "last"), "SUCCEEDED")
    assert sorted((a.task, a.status) for a in store.attempts(run.run_id)) == [
        ("fill", "DONE"), ("free", "DONE"), ("last", "DONE")]
    store.close()


def test_a_disk_that_stays_full_cancels_the_run_and_the_records_end_once_it_is_freed(
        tmp_path: Path, small_disk: Path) -> None:
    filler, gate, count = small_disk / "filler", tmp_path / "gate", tmp_path / "count"
    slow_started = tmp_path / "slow-started"
    url = f"sqlite:///{small_disk / 'store.db'}"
    path = pipeline(tmp_path, [  # the disk fills once both jobs started, so both attempts were recorded
        sh("fill", f"echo fill >> {count}; [ -e {gate} ] || {{ while [ ! -e {slow_started} ]; do sleep 0.01; done; "
                   f"dd if=/dev/zero of={filler} bs=64k 2>/dev/null; }}; true"),
        sh("slow", f"echo slow >> {count}; touch {slow_started}; [ -e {gate} ] || sleep 300"),
        sh("last", "true", after=["fill", "slow"]),
    ])
    result = jobgraph(tmp_path, "run", path, "--store", url, env={"JOBGRAPH_STORE_PATIENCE": "1"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: the disk holding the store {small_disk / 'store.db'} is full (" in result.stderr
    assert "the store took no record for 1s, so the run is cancelled (its jobs are stopped)" in result.stderr
    assert "Once the store is back, `jobgraph retry" in result.stderr and "Traceback" not in result.stderr

    filler.unlink()
    gate.touch()
    store = Store(url)
    run = store.runs(1)[0]
    assert run.state == "RUNNING"  # what could not be written stays unwritten until the store is back
    assert [(a.task, a.attempt) for a in sorted(store.attempts(run.run_id), key=lambda a: a.task)] == [
        ("fill", 1), ("slow", 1)]  # what was recorded before the disk filled is all there
    retried = jobgraph(tmp_path, "retry", run.run_id, "--store", url)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"run {run.run_id} of p: its jobgraph process died" in retried.stderr
    assert_every_record_ended(store, run.run_id)
    assert {t.task: t.state for t in store.tasks(run.run_id)} == dict.fromkeys(("fill", "slow", "last"), "SUCCEEDED")
    store.close()


@dataclass
class Server:
    """A PostgreSQL cluster of the test's own, which its jobs may stop and start."""

    url: str
    stop: str
    start: str

    def run(self, command: str) -> None:
        subprocess.run(["sh", "-c", command], check=True, capture_output=True, timeout=60)


@pytest.fixture
def own_postgres() -> Iterator[Server]:
    """A throwaway PostgreSQL cluster (not the suite's shared one, which other tests use)."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert binaries, "PostgreSQL's server is not installed; run `bash scripts/setup-postgres.sh`"
    bin_dir = Path(binaries[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="jobgraph-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    port, data = _free_port(), folder / "data"
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    as_postgres = "su postgres -s /bin/sh -c"
    server = Server(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
        f"{as_postgres} '{bin_dir}/pg_ctl -D {data} -m fast -w stop' >/dev/null",
        f"{as_postgres} \"{bin_dir}/pg_ctl -D {data} -l {folder}/server.log -w -o '{options}' start\" >/dev/null",
    )
    server.run(f"{as_postgres} '{bin_dir}/initdb -D {data} -U postgres --auth=trust --no-sync' >/dev/null")
    server.run(server.start)
    try:
        yield server
    finally:
        subprocess.run(["sh", "-c", server.stop], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_postgresql_restart_mid_run_costs_a_pause_and_no_record(tmp_path: Path, own_postgres: Server) -> None:
    stopped = tmp_path / "stopped"
    path = pipeline(tmp_path, [
        sh("stop", f"{own_postgres.stop}; touch {stopped}"),
        sh("after", "true", after=["stop"]),
    ])
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250", **PATIENCE}
    run = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", path, "--store", own_postgres.url], cwd=tmp_path,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not stopped.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)  # the run meets a server that is down, and waits
        own_postgres.run(own_postgres.start)  # (the job cannot start it: what a job starts ends with it)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    err = err.replace("\n", " ")
    assert run.returncode == 0, out + err
    assert f"warning: cannot reach the store {own_postgres.url} (" in err
    assert "the store is back; the run goes on" in err and "Traceback" not in err
    store = Store(own_postgres.url)
    [summary] = store.runs(1)
    assert summary.state == "SUCCEEDED"
    assert {t.task: t.state for t in store.tasks(summary.run_id)} == {"stop": "SUCCEEDED", "after": "SUCCEEDED"}
    assert [(a.task, a.status) for a in store.attempts(summary.run_id)] == [("stop", "DONE"), ("after", "DONE")]
    store.close()


def test_a_postgresql_server_that_stops_mid_run_cancels_it_and_nothing_stays_running(
        tmp_path: Path, own_postgres: Server) -> None:
    gate = tmp_path / "gate"
    path = pipeline(tmp_path, [
        sh("first", "true"),
        sh("stop", f"[ -e {gate} ] || {own_postgres.stop}", after=["first"]),
        sh("after", "true", after=["stop"]),
    ])
    result = jobgraph(tmp_path, "run", path, "--store", own_postgres.url, env={"JOBGRAPH_STORE_PATIENCE": "1"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: cannot reach the store {own_postgres.url} (" in result.stderr
    assert "check that its database server is running and reachable" in result.stderr
    assert "the run is cancelled" in result.stderr and "Traceback" not in result.stderr
    assert "cannot reach the store" in jobgraph(tmp_path, "history", "--store", own_postgres.url).stderr

    own_postgres.run(own_postgres.start)
    gate.touch()
    store = Store(own_postgres.url)
    run = store.runs(1)[0]
    assert [(a.task, a.status) for a in store.attempts(run.run_id)][:1] == [("first", "DONE")]
    retried = jobgraph(tmp_path, "retry", run.run_id, "--store", own_postgres.url)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert_every_record_ended(store, run.run_id)
    assert {t.task: t.state for t in store.tasks(run.run_id)} == dict.fromkeys(("first", "stop", "after"), "SUCCEEDED")
    assert [t.attempts for t in store.tasks(run.run_id) if t.task == "first"] == [1]
    store.close()


class FlakyStore:
    """A store whose writes fail `failures` times with `fault`, then succeed; it keeps what it took, in order."""

    def __init__(self, failures: int, fault: StoreFault) -> None:
        self.failures, self.fault, self.taken = failures, fault, []  # type: ignore[var-annotated]

    def record_all(self, events: list[object]) -> None:
        if self.failures:
            self.failures -= 1
            raise self.fault
        self.taken.extend(events)


def events(count: int) -> list[Event]:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return [*(TaskChanged("r", f"job{i}", TaskState.QUEUED, at) for i in range(count - 1)),
            RunEnded("r", RunState.SUCCEEDED, at)]


def test_the_recorder_waits_with_backoff_and_keeps_events_in_order() -> None:
    store = FlakyStore(5, StoreFault("server restarting", transient=True))
    sleeps: list[float] = []
    told: list[str] = []
    recorder = RunRecorder(store, told.append, told.append, patience=10, sleep=sleeps.append,  # type: ignore[arg-type]
                           clock=lambda: sum(sleeps))
    sent = events(4)
    for event in sent:
        recorder(event)
    assert store.taken == sent and recorder.unwritten == 0 and recorder.down is None
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8]
    assert told == ["server restarting; the run waits up to 10s for the store", "the store is back; the run goes on"]


def test_the_recorder_gives_up_once_then_writes_what_it_kept_when_the_store_is_back() -> None:
    store = FlakyStore(1000, StoreFault("disk full", transient=True))
    sleeps: list[float] = []
    downs: list[str] = []
    recorder = RunRecorder(store, downs.append, patience=1, sleep=sleeps.append,  # type: ignore[arg-type]
                           clock=lambda: sum(sleeps))
    sent = events(4)
    recorder(sent[0])
    assert downs == ["disk full; the store took no record for 1s, so the run is cancelled (its jobs are stopped)"]
    assert sum(sleeps) <= 1 and recorder.unwritten == 1
    recorder(sent[1])
    recorder(sent[2])
    assert recorder.unwritten == 3 and len(downs) == 1
    store.failures = 0
    recorder(sent[3])
    assert store.taken == sent and recorder.unwritten == 0 and recorder.flush()


def test_a_fault_that_waiting_cannot_cure_gives_up_at_once() -> None:
    store = FlakyStore(1, StoreFault("the store is damaged", transient=False))
    sleeps: list[float] = []
    downs: list[str] = []
    recorder = RunRecorder(store, downs.append, patience=30, sleep=sleeps.append)  # type: ignore[arg-type]
    recorder(events(1)[0])
    assert sleeps == [] and downs == ["the store is damaged; the store took no record, so the run is cancelled "
                                      "(its jobs are stopped)"]


def open_store(url: str, writer: str) -> Store | SqlStore:
    """A SQLite store that writes through sqlite3 (as `jobgraph run` does) or through SQLAlchemy (as on PostgreSQL)."""
    if writer == "sqlite3":
        return Store(url)
    return SqlStore(url, "test-host:1:1")


def started_run(store: Store, tasks: tuple[str, ...] = ("a", "b")) -> list[Event]:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return [RunStarted("r", "p", at, at, tuple(TaskInfo(t, "", "img", ()) for t in tasks), "{}"),
            *(AttemptStarted("r", t, 1, at, Path("log")) for t in tasks)]


class CommitsThenFails:
    """A real store whose next write commits and then fails as if the connection dropped before the answer."""

    def __init__(self, store: Store) -> None:
        self.store, self.fail_next, self.writes = store, True, []  # type: ignore[var-annotated]

    def record_all(self, events: list[Event]) -> None:
        self.writes.append(len(events))
        self.store.record_all(events)
        if self.fail_next:
            self.fail_next = False
            raise StoreFault("server closed the connection", transient=True)


@pytest.mark.parametrize("writer", ["sqlite3", "sqlalchemy"])
def test_a_batch_whose_commit_was_lost_in_flight_is_written_again_alone_and_not_twice(tmp_path: Path,
                                                                                      writer: str) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", writer)
    flaky, sleeps, downs = CommitsThenFails(store), [], []  # type: ignore[var-annotated]
    recorder = RunRecorder(flaky, downs.append, patience=10, sleep=sleeps.append,  # type: ignore[arg-type]
                           clock=lambda: sum(sleeps))
    first = started_run(store)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    recorder.record_all(first)  # committed, then "failed": its rewrite conflicts, so it is there
    assert recorder.unwritten == 0 and downs == [] and flaky.writes == [3, 3]
    recorder.record_all([TaskChanged("r", "a", TaskState.RUNNING, at), RunEnded("r", RunState.SUCCEEDED, at)])
    assert recorder.finished and [(a.task, a.status) for a in store.attempts("r")] == [("a", "RUNNING"),
                                                                                     ("b", "RUNNING")]
    assert store.run("r").state == "SUCCEEDED" and {t.task: t.state for t in store.tasks("r")}["a"] == "RUNNING"
    store.close()


@pytest.mark.parametrize("writer", ["sqlite3", "sqlalchemy"])
def test_a_batch_with_a_refused_record_writes_every_other_one(tmp_path: Path, writer: str) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", writer)
    downs: list[str] = []
    recorder = RunRecorder(store, downs.append, patience=10)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    first = started_run(store, ("a",))
    recorder.record_all([*first, TaskChanged("r", "a", TaskState.RUNNING, at, attempt=1),
                         first[-1],  # the same attempt again: the store refuses it
                         TaskChanged("r", "a", TaskState.SUCCEEDED, at, attempt=1)])
    assert len(downs) == 1 and "the store refused a record of run r (AttemptStarted: UNIQUE constraint" in downs[0]
    assert recorder.unwritten == 1  # given up on: the rest waits for the next write
    recorder.record_all([RunEnded("r", RunState.SUCCEEDED, at)])
    assert recorder.finished and len(downs) == 1
    assert [(t.task, t.state, t.attempts) for t in store.tasks("r")] == [("a", "SUCCEEDED", 1)]
    assert [a.task for a in store.attempts("r")] == ["a"] and store.run("r").state == "SUCCEEDED"
    store.close()
