"""Wake-ups through the store, on SQLite (a FIFO beside the file) and PostgreSQL (LISTEN/NOTIFY): a change
another process commits wakes the listener, a planted link or file is never opened, and `jobgraph serve`
with a long poll interval still starts a triggered run, a moved fire time and a standby's work at once."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from jobgraph.store.wakeup import Listener, WakeupUnavailable
from tests.cli.test_service import wait_until
from tests.conftest import Cli, WritePipeline, sh

LONG_POLL = 60.0
"""The services below poll this seldom: anything they do sooner, a wake-up made them do."""


def readable(listener: Listener, seconds: float) -> bool:
    return bool(select.select([listener.fileno()], [], [], seconds)[0])


def deployed(store: Store) -> Deployments:
    deployments = Deployments(store)
    deployments.deploy("nightly", "{}", "test", None, datetime.now(UTC), None)
    return deployments


def test_a_change_committed_elsewhere_wakes_the_listener_and_only_a_change(store_url: str) -> None:
    store, other = Store(store_url), Store(store_url)
    listener = Deployments(store).listen()
    try:
        assert not readable(listener, 0.2)
        deployed(other)  # another process's store: its commit wakes the listener
        assert readable(listener, 30)
        listener.drain()
        assert not readable(listener, 0.2)
        Deployments(other, wakes=False).update("nightly", failures_in_row=1)  # the scheduler's own writes
        Deployments(other).lease("scheduler")  # and reads
        assert not readable(listener, 0.5)
        Deployments(other).record_fire("nightly", datetime.now(UTC), "REQUESTED", datetime.now(UTC))
        assert readable(listener, 30)
    finally:
        listener.close()
        store.close()
        other.close()


def test_a_poke_with_nobody_listening_creates_nothing_and_a_stale_fifo_is_reused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    deployed(store)  # no listener: nothing to wake, nothing made
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith("-wake")) == []
    first = Deployments(store).listen()
    first.close()  # a service that died left its FIFO behind
    fifo = tmp_path / "store.db-wake"
    store_mode = os.stat(tmp_path / "store.db").st_mode & 0o666
    assert fifo.is_fifo() and (fifo.stat().st_mode & 0o777) == store_mode | 0o600  # who may write the store
    Deployments(store).update("nightly", failures_in_row=2)  # nobody reads it: the poke neither blocks nor fails
    again, other = Deployments(store).listen(), Store(url)
    try:
        assert not readable(again, 0.2)  # what was poked into the dead one's FIFO died with it
        Deployments(other).update("nightly", failures_in_row=3)
        assert readable(again, 30)
    finally:
        again.close()
        other.close()
        store.close()


@pytest.mark.parametrize("planted", ["symlink", "file", "fifo-link"])
def test_a_planted_link_or_file_is_never_opened_or_written(tmp_path: Path, planted: str) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    target = tmp_path / "victim"
    fifo = tmp_path / "store.db-wake"
    if planted == "symlink":
        target.write_text("keep me\n")
        fifo.symlink_to(target)
    elif planted == "file":
        fifo.write_text("keep me\n")
        target = fifo
    else:  # a link to a FIFO that a reader holds open: following it would write into the reader's pipe
        os.mkfifo(target)
        fifo.symlink_to(target)
    reader = os.open(target, os.O_RDONLY | os.O_NONBLOCK) if planted == "fifo-link" else None
    try:
        with pytest.raises(WakeupUnavailable) as refused:
            Deployments(store).listen()
        why = "is a symbolic link" if planted != "file" else "is not a FIFO"
        assert why in str(refused.value) and str(fifo) in str(refused.value)
        deployed(store)  # pokes: must not write through the link or into the file
        if reader is None:
            assert target.read_text() == "keep me\n"
        else:
            assert os.read(reader, 10) == b""  # empty: a byte written through the link would wait here
        assert fifo.is_symlink() == (planted != "file")
    finally:
        if reader is not None:
            os.close(reader)
        store.close()


def start(tmp_path: Path, url: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "JOBGRAPH_STORE": url}
    return subprocess.Popen([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lag(store: Store, deployments: Deployments, scheduled: datetime) -> float:
    """Seconds from a fire (or request) time to the recorded start of the first job of the run it started
    (once that run has ended)."""
    def started() -> str | None:
        return next((f.run_id for f in deployments.fires("svc") if f.action == "STARTED"
                     and f.scheduled_time == scheduled), None)
    wait_until(lambda: started() is not None, LONG_POLL * 2)
    run_id = started()
    assert run_id is not None
    wait_until(lambda: store.run(run_id).state != "RUNNING", LONG_POLL * 2)
    return (min(a.started_at for a in store.attempts(run_id)) - scheduled).total_seconds()


def stop(*services: subprocess.Popen[str]) -> list[str]:
    for service in services:
        service.send_signal(signal.SIGTERM)
    return [service.communicate(timeout=60)[0] for service in services]


def test_serve_wakes_for_a_trigger_and_a_moved_fire_time_not_its_poll(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, any_store_url: str) -> None:
    write_pipeline({"name": "svc", "schedule": "11520 MINUTE", "overlap": "allow", "jobs": [sh("a", "true")]})
    cli("deploy", "pipeline.yaml", "--store", any_store_url, check=0)
    store = Store(any_store_url)
    deployments = Deployments(store)
    holder, standby = start(tmp_path, any_store_url, "serve", "--tick", f"{LONG_POLL:g}"), None
    try:
        wait_until(lambda: deployments.lease_holder("scheduler", datetime.now(UTC)) is not None, LONG_POLL)
        standby = start(tmp_path, any_store_url, "serve", "--tick", f"{LONG_POLL:g}")  # must not steal wake-ups
        for _ in range(2):
            known = {f.scheduled_time for f in deployments.fires("svc")}
            assert "run requested from the scheduler service" in cli("trigger", "svc", "--store", any_store_url,
                                                                     check=0).stdout
            request = next(f.scheduled_time for f in deployments.fires("svc") if f.scheduled_time not in known)
            assert lag(store, deployments, request) < LONG_POLL / 4
        fire = datetime.now(UTC) + timedelta(seconds=1)  # what `resume` writes, nearer: serve sleeps till then
        deployments.update("svc", next_fire_at=fire)
        assert 0 <= lag(store, deployments, fire) < LONG_POLL / 4
        outputs = stop(holder, standby)
    finally:
        for service in (holder, standby):
            if service is not None and service.poll() is None:
                service.kill()
    assert all("no wake-ups" not in out for out in outputs), outputs
    assert [r.state for r in store.runs(10, "svc")] == ["SUCCEEDED"] * 3
    store.close()


def test_serve_polls_when_a_planted_link_takes_the_fifos_place(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    write_pipeline({"name": "svc", "jobs": [sh("a", "true")]})
    cli("deploy", "pipeline.yaml", "--store", url, check=0)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (tmp_path / "store.db-wake").symlink_to(victim)
    serve = start(tmp_path, url, "serve", "--tick", "0.2")
    try:
        store = Store(url)
        wait_until(lambda: Deployments(store).lease_holder("scheduler", datetime.now(UTC)) is not None)
        assert "run requested from the scheduler service" in cli("trigger", "svc", "--store", url, check=0).stdout
        wait_until(lambda: [r.state for r in store.runs(10, "svc")] == ["SUCCEEDED"])  # trigger returns at its start
        [out] = stop(serve)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert f"warning: no wake-ups from the store ({tmp_path / 'store.db-wake'} is a symbolic link" in out
    assert out.count("no wake-ups") == 1 and "polling it instead" in out
    assert victim.read_text() == "keep me\n"
    assert [r.state for r in store.runs(10, "svc")] == ["SUCCEEDED"]
