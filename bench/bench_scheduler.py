"""Benchmark: scheduler lag under `jobgraph serve`, on SQLite and PostgreSQL.

A one-job pipeline (`true`) is deployed with the cron `* * * * *` and served by a real `jobgraph serve`
(default options). Two lags are read from the store's records, never from this script's clock:
- fire -> first job: the first attempt's start minus the fire time it ran for. So that no sample waits
  a minute, each sample moves the pipeline's next fire time to about a second ahead, the way
  `resume` sets it (the scheduler treats it as any fire time); `--natural` also waits for one real
  minute boundary first.
- trigger -> first job: a real `jobgraph trigger` from another process; the first attempt's start minus
  the time the request was recorded.
Two more columns split the lag: the median time to the fire's record (waking and the scheduler's tick)
and to the run's record (the run built and started); the rest is the engine recording the run and
dispatching its first job.

PostgreSQL: `--postgres URL` (an admin URL such as postgresql+psycopg://postgres@127.0.0.1:5432), else a
throwaway cluster is started as in the tests (needs root and PostgreSQL's server installed).

Run: .venv/bin/python bench/bench_scheduler.py [--samples N] [--backend sqlite|postgresql|both] [--natural]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import yaml
from sqlalchemy import create_engine, text

from jobgraph.store import Store
from jobgraph.store.deployments import Deployments, Fire

NAME = "lag"


class Lag(NamedTuple):
    """Seconds after the fire (or request) time: the first job's start, the fire's record, the run's record."""

    first_job: float
    fire_recorded: float
    run_recorded: float


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def first_job_start(store: Store, run_id: str) -> datetime | None:
    attempts = store.attempts(run_id)
    return min(a.started_at for a in attempts) if attempts else None


def started(deployments: Deployments, scheduled: datetime) -> Fire | None:
    for fire in deployments.fires(NAME):
        if fire.action == "STARTED" and fire.scheduled_time == scheduled and fire.run_id:
            return fire
    return None


def lag_of(store: Store, deployments: Deployments, scheduled: datetime) -> Lag:
    """Seconds from a fire (or request) time to the first job's recorded start of the run it started, and
    the steps on the way: the fire's record (waking, the tick), the run's record (building the run)."""
    wait_for(lambda: started(deployments, scheduled), 120, "the run to start")
    fire = started(deployments, scheduled)
    assert fire is not None and fire.run_id is not None
    run_id = fire.run_id
    wait_for(lambda: first_job_start(store, run_id), 60, "the first job to start")
    start = first_job_start(store, run_id)
    assert start is not None
    wait_for(lambda: store.run(run_id).state != "RUNNING", 60, "the run to end")
    return Lag(*((moment - scheduled).total_seconds() for moment in (start, fire.at, store.run(run_id).started_at)))


def fire_lags(store: Store, samples: int, natural: bool) -> list[Lag]:
    deployments = Deployments(store)
    lags = []
    if natural:
        upcoming = deployments.get(NAME).next_fire_at
        assert upcoming is not None
        print(f"  waiting for the cron's fire at {upcoming:%H:%M:%S} UTC", file=sys.stderr)
        lags.append(lag_of(store, deployments, upcoming))
    for _ in range(samples):
        fire = datetime.now(UTC) + timedelta(seconds=1 + random.random())
        deployments.update(NAME, next_fire_at=fire)
        lags.append(lag_of(store, deployments, fire))
    return lags


def trigger_lags(store: Store, samples: int, env: dict[str, str], cwd: Path) -> list[Lag]:
    deployments = Deployments(store)
    lags = []
    for _ in range(samples):
        known = {f.scheduled_time for f in deployments.fires(NAME)}
        subprocess.run([sys.executable, "-m", "jobgraph", "trigger", NAME], cwd=cwd, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        requested = next(f.scheduled_time for f in deployments.fires(NAME)
                         if f.action == "TAKEN" and f.scheduled_time not in known)
        lags.append(lag_of(store, deployments, requested))
    return lags


def measure(url: str, samples: int, natural: bool) -> tuple[list[Lag], list[Lag]]:
    with tempfile.TemporaryDirectory(prefix="jobgraph-bench-") as folder:
        cwd = Path(folder)
        env = {**os.environ, "JOBGRAPH_HOME": str(cwd / ".jobgraph"), "JOBGRAPH_STORE": url}
        (cwd / "pipeline.yaml").write_text(yaml.safe_dump({
            "name": NAME, "schedule": "* * * * *", "overlap": "allow", "images": {"sh": ["sh", "-c"]},
            "jobs": [{"name": "first", "image": "sh", "args": ["true"]}]}))
        subprocess.run([sys.executable, "-m", "jobgraph", "deploy", "pipeline.yaml"], cwd=cwd, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        serve = subprocess.Popen([sys.executable, "-m", "jobgraph", "serve"], cwd=cwd, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Store(url) as store:
                wait_for(lambda: Deployments(store).lease_holder("scheduler", datetime.now(UTC)), 60, "serve")
                fires = fire_lags(store, samples, natural)
                triggers = trigger_lags(store, samples, env, cwd)
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                serve.kill()
    return fires, triggers


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    """A PostgreSQL cluster on a free loopback port, as the tests start one; None if it cannot be had."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries or os.geteuid() != 0:
        yield None
        return
    bin_dir = Path(binaries[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="jobgraph-bench-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"

    def as_postgres(command: str) -> None:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, capture_output=True)

    try:
        as_postgres(f"{bin_dir}/initdb -D {folder}/data -U postgres --auth=trust -E UTF8 --no-sync >/dev/null")
        as_postgres(f"{bin_dir}/pg_ctl -D {folder}/data -l {folder}/server.log -w -o '{options}' start >/dev/null")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", f"{bin_dir}/pg_ctl -D {folder}/data -m fast stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(server: str) -> str:
    name = f"bench_{os.getpid()}_{random.randrange(10**6)}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server}/{name}"


def row(backend: str, what: str, lags: list[Lag]) -> str:
    ms = sorted(lag.first_job * 1000 for lag in lags)
    steps = [statistics.median(getattr(lag, step) * 1000 for lag in lags) for step in ("fire_recorded", "run_recorded")]
    return (f"| {backend} | {what} | {len(ms)} | {statistics.median(ms):.1f} | {ms[0]:.1f} | {ms[-1]:.1f} | "
            f"{steps[0]:.1f} | {steps[1]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server (a database is created on it)")
    parser.add_argument("--natural", action="store_true", help="also wait for one real minute-boundary fire")
    args = parser.parse_args()
    rows = []
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory(prefix="jobgraph-bench-db-") as folder:
            fires, triggers = measure(f"sqlite:///{folder}/jobgraph.db", args.samples, args.natural)
        rows += [row("SQLite", "fire -> first job", fires), row("SQLite", "trigger -> first job", triggers)]
    if args.backend in ("postgresql", "both"):
        with contextlib.ExitStack() as stack:
            server = args.postgres or stack.enter_context(throwaway_postgres())
            if server is None:
                print("PostgreSQL: no server (give --postgres URL, or run as root with PostgreSQL installed)",
                      file=sys.stderr)
            else:
                fires, triggers = measure(fresh_database(server), args.samples, args.natural)
                rows += [row("PostgreSQL", "fire -> first job", fires),
                         row("PostgreSQL", "trigger -> first job", triggers)]
    load = os.getloadavg()
    print(f"scheduler lag, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| store | lag | samples | median ms | min ms | max ms | median ms to the fire's record | "
          "median ms to the run's record |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
