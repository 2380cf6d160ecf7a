"""Benchmark: GET /metrics of a real `jobgraph web` over bench/web_data.py's store (10,000 runs, a 5,000-job run).

A scrape reads the store: the first one the whole history (every run, job and attempt, aggregated by
the database), each later one only the runs that started since the reader's edge plus a fingerprint
of the settled runs (app/metrics.py). Printed, each the median of N where it repeats:
  - the first scrape over HTTP (a fresh server: the whole history read once);
  - later scrapes over HTTP (what Prometheus pays every scrape interval);
  - the whole history read in-process without the reader (the cost of the first scrape, without HTTP);
  - the size of the answer, in bytes and lines.
The machine's load average before and after is printed too: on a shared machine, re-run.

Run: .venv/bin/python bench/bench_metrics.py [--data FOLDER] [--scrapes N] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from web_data import copy_store, generate

from jobgraph.app import metrics
from jobgraph.store import Store


def _serve(url: str, home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "JOBGRAPH_HOME": str(home)}
    env.pop("JOBGRAPH_STORE", None)
    server = subprocess.Popen([sys.executable, "-m", "jobgraph", "web", "--port", "0", "--store", url], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    if not found:
        server.kill()
        raise SystemExit(f"jobgraph web did not start: {line}{server.stderr.read() if server.stderr else ''}")
    return server, found[1]


def _timed_scrape(base: str) -> tuple[float, bytes]:
    began = time.perf_counter()
    answer = httpx.get(f"{base}/metrics", timeout=600)
    took = time.perf_counter() - began
    answer.raise_for_status()
    return took, answer.content


def measure(url: str, scrapes: int, home: Path) -> None:
    """Print the figures for the store at `url`."""
    server, base = _serve(url, home)
    try:
        first, body = _timed_scrape(base)
        later = [_timed_scrape(base)[0] for _ in range(scrapes)]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    with Store(url) as records:
        full = []
        for _ in range(3):
            began = time.perf_counter()
            metrics.snapshot(records)
            full.append(time.perf_counter() - began)
    print(f"store {url.split('@')[-1]}")
    print(f"  first scrape (whole history):      {first * 1000:8.1f} ms")
    print(f"  later scrapes (median of {scrapes:3d}):     {statistics.median(later) * 1000:8.1f} ms "
          f"(min {min(later) * 1000:.1f}, max {max(later) * 1000:.1f})")
    print(f"  whole history in-process (median 3): {statistics.median(full) * 1000:6.1f} ms")
    lines = body.count(b"\n")
    print(f"  answer: {len(body):,} bytes, {lines:,} lines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a folder with (or for) web_data.py's store; made if empty")
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--postgres", metavar="URL", help="also measure a copy of the store in this empty database")
    args = parser.parse_args()
    folder = args.data or Path(tempfile.mkdtemp(prefix="jobgraph-metrics-"))
    database = folder / "jobgraph.db"
    url = f"sqlite:///{database}"
    if not database.exists():
        generate(folder)
    print(f"load average before: {os.getloadavg()}")
    measure(url, args.scrapes, folder / "home")
    if args.postgres:
        copy_store(url, args.postgres)
        measure(args.postgres, args.scrapes, folder / "home")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
