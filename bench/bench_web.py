"""Benchmark: `jobgraph web` over 10,000 runs and a 5,000-job run, beside baselines, in one table.

The store comes from bench/web_data.py (the real engine and store writer; made once in --data and
reused). One real `jobgraph web` process (uvicorn) serves it; every figure is the median of N
requests or page loads, each on a new connection (a new browser context: cold cache), after one
untimed warm-up. Beside each, in the same command:
  - the same SQL straight through the driver, sqlite3 or psycopg (the store's floor: no HTTP, no JSON,
    no framework);
  - a static file of the same bytes served by `python -m http.server` (the HTTP floor): the API's own
    answer saved to a file, and for the page, plain HTML of the same byte size (a table of rows).
Cases:
  (a) GET /api/v1/runs?limit=50: the first page, a deep page (page 100, by following next_cursor),
      filtered by a rare and a common pipeline and by a rare state; GET /api/v1/pipelines; and the
      server time of the HTML pages `/`, `/runs` and the 5,000-job run's;
  (b) the 5,000-job run's page in Chromium (/usr/bin/chromium, headless, through Playwright): time to
      first byte, first paint and first contentful paint (performance.getEntriesByType('paint')),
      DOMContentLoaded, load, and time to interactive: the latest of DOMContentLoaded, the end of the
      last long task (> 50 ms, PerformanceObserver 'longtask') and the end of the last request the
      page's script made (fetch, XHR, an event stream that ended), once the page has been quiet for
      0.5 s; the page's bytes (the document, and all it transferred) and its DOM's element count;
  (c) GET /api/v1/runs/{id} of the 5,000-job run (5,000 jobs and their attempts).
The machine's load average before and after is printed with the table: on a shared machine, re-run.

Run: .venv/bin/python bench/bench_web.py [--data FOLDER] [--requests N] [--loads N] [--postgres URL]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

from page_load import page_loads, static_html
from web_data import copy_store, generate

HERE = Path(__file__).resolve().parent
DEEP_PAGE = 100
"""The deep page of the runs list: runs 4,951 to 5,000 of 10,000."""


@dataclass
class Row:
    """One line of the table."""

    measure: str
    ours: str
    direct: str
    static: str
    goal: str
    met: bool | None


@dataclass(frozen=True)
class Timing:
    """Milliseconds of N timed repeats: the median, and the spread."""

    median: float
    low: float
    high: float
    size: int = 0

    def __str__(self) -> str:
        return f"{self.median:.1f} ms ({self.low:.1f}-{self.high:.1f})"


def timing(samples: list[float], size: int = 0) -> Timing:
    return Timing(statistics.median(samples), min(samples), max(samples), size)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str) -> tuple[float, int, bytes]:
    """(seconds, status, body) of one GET on a new connection, from connecting to the last byte."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    return time.perf_counter() - start, response.status, body


def timed_get(port: int, path: str, repeat: int) -> tuple[Timing, bytes]:
    """The median of `repeat` GETs after one untimed warm-up; the answer must be 200."""
    samples, body = [], b""
    for run in range(repeat + 1):
        took, status, body = get(port, path)
        if status != 200:
            raise SystemExit(f"GET {path} answered {status}: {body[:500]!r}")
        if run:
            samples.append(took * 1000)
    return timing(samples, len(body)), body


def timed_call(call: Callable[[], object], repeat: int) -> Timing:
    samples = []
    for run in range(repeat + 1):
        start = time.perf_counter()
        call()
        if run:
            samples.append((time.perf_counter() - start) * 1000)
    return timing(samples)


@contextmanager
def serving(command: list[str], port: int, ready_path: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """Start a server process (its own session), wait until `ready_path` answers, stop it at the end."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if get(port, ready_path)[1] < 500:
                        break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"{' '.join(command)} did not serve {ready_path}:\n"
                                     f"{log.read().decode()[-3000:]}")
                time.sleep(0.1)
            yield
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def jobgraph_command() -> list[str]:
    script = Path(sys.executable).parent / "jobgraph"
    return [str(script)] if script.exists() else [sys.executable, "-m", "jobgraph"]


@dataclass(frozen=True)
class Data:
    """The generated store: where it is, and the id of its 5,000-job run."""

    folder: Path
    url: str
    big_run_id: str
    summary: str


def data_in(folder: Path, runs: int, big_jobs: int) -> Data:
    """The generated store in `folder`, made now if it is not there yet (a manifest says what it holds)."""
    manifest = folder / "manifest.json"
    if not manifest.exists():
        made = generate(folder, runs, big_jobs, say=lambda text: print(text, file=sys.stderr))
        manifest.write_text(json.dumps({"url": made.url, "big_run_id": made.big_run_id, "runs": made.runs,
                                        "jobs": made.jobs, "attempts": made.attempts, "seconds": made.seconds}))
    facts = json.loads(manifest.read_text())
    summary = (f"{facts['runs']:,} runs, {facts['jobs']:,} jobs, {facts['attempts']:,} attempts "
               f"(generated in {facts['seconds']:.1f} s)")
    return Data(folder, facts["url"], facts["big_run_id"], summary)


class Direct:
    """The API's queries straight through the driver (sqlite3 or psycopg), parameters bound: the store's floor.

    The same SQL as jobgraph.app.queries runs: a page of runs, then its jobs counted by state (the
    latest row of each job only for a retried run), and for the run detail the run without its
    snapshot, its jobs as they stand now and its attempts.
    """

    LATEST = ("NOT EXISTS (SELECT 1 FROM task_runs AS later WHERE later.run_id = task_runs.run_id"
              " AND later.task = task_runs.task AND later.run_attempt > task_runs.run_attempt)")
    COLUMNS = 'run_id, pipeline, state, run_attempt, started_at, finished_at, "trigger", pipeline_version'
    ORDER = " ORDER BY started_at DESC, run_id DESC LIMIT :limit"
    PAGES: ClassVar[dict[str, str]] = {  # the API's query for each filter, as its SQL has it (no filter: no condition)
        "all": "SELECT " + COLUMNS + " FROM runs" + ORDER,
        "pipeline": "SELECT " + COLUMNS + " FROM runs WHERE pipeline = :pipeline" + ORDER,
        "state": "SELECT " + COLUMNS + " FROM runs WHERE state = :state" + ORDER,
        "after": ("SELECT " + COLUMNS + " FROM runs WHERE started_at < :at OR (started_at = :at AND run_id < :run_id)"
                  + ORDER),
    }
    COUNTS = "SELECT run_id, state, count(*) FROM task_runs WHERE run_id IN (SELECT value FROM json_each(:ids)) AND "
    PG_COUNTS = "SELECT run_id, state, count(*) FROM task_runs WHERE run_id = ANY(:ids) AND "
    BY_STATE = " GROUP BY run_id, state"
    RUN = ('SELECT run_id, pipeline, state, run_attempt, started_at, scheduled_time, finished_at, owner, "trigger", '
           "pipeline_version, cancel_requested_at FROM runs WHERE run_id = :run_id")
    JOBS = ("SELECT task, state, attempts, started_at, finished_at, duration_secs, return_value, error_message "
            "FROM task_runs WHERE run_id = :run_id AND " + LATEST + " ORDER BY task")
    ATTEMPTS = ("SELECT task, attempt, run_attempt, status, exit_code, error, started_at, finished_at, duration_secs, "
                "runner FROM attempts WHERE run_id = :run_id ORDER BY id")

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite:///")
        if self.sqlite:
            self.db: Any = sqlite3.connect(url.removeprefix("sqlite:///"))
        else:
            import psycopg

            self.db = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)

    def rows(self, sql: str, values: dict[str, Any]) -> list[Any]:
        """The rows of one statement; psycopg's placeholders are `%(name)s` where sqlite3's are `:name`."""
        if self.sqlite:
            return list(self.db.execute(sql, values).fetchall())
        return list(self.db.execute(re.sub(r":(\w+)", r"%(\1)s", sql), values).fetchall())

    def page(self, which: str = "all", **values: Any) -> list[Any]:
        """One page of 50 runs and their jobs counted by state, as the API reads them."""
        runs = self.rows(self.PAGES[which], {**values, "limit": 51})[:50]
        first = [row[0] for row in runs if row[3] == 1]
        retried = [row[0] for row in runs if row[3] != 1]
        counts = []
        for ids, current in ((first, "run_attempt = 1"), (retried, self.LATEST)):
            if ids:
                query = (self.COUNTS if self.sqlite else self.PG_COUNTS) + current + self.BY_STATE
                counts += self.rows(query, {"ids": json.dumps(ids) if self.sqlite else ids})
        return [runs, counts]

    def offset_key(self, skip: int) -> dict[str, Any]:
        """The started_at and run_id of the last run before the page that starts after `skip` runs."""
        row = self.rows("SELECT started_at, run_id FROM runs ORDER BY started_at DESC, run_id DESC "
                        "LIMIT 1 OFFSET :skip", {"skip": skip - 1})[0]
        return {"at": row[0], "run_id": str(row[1])}

    def last_runs(self) -> list[Any]:
        """The newest run of each deployed pipeline."""
        names = [name for (name,) in self.rows("SELECT name FROM pipelines ORDER BY name", {})]
        return [self.rows(self.PAGES["pipeline"], {"pipeline": name, "limit": 1}) for name in names]

    def detail(self, run_id: str) -> list[Any]:
        """The run without its snapshot, its jobs as they stand now, its attempts."""
        return [self.rows(query, {"run_id": run_id}) for query in (self.RUN, self.JOBS, self.ATTEMPTS)]


@dataclass(frozen=True)
class Case:
    """One request to time: its path, the same reads through sqlite3 (None: none), and its goal in ms."""

    label: str
    path: str
    direct: Callable[[], object] | None
    goal: float | None
    repeat: int


def deep_cursor(port: int) -> str:
    """The cursor of page DEEP_PAGE of the runs list, by following next_cursor from the first page."""
    cursor, pages = json.loads(get(port, "/api/v1/runs?limit=50")[2])["next_cursor"], 1
    while cursor and pages < DEEP_PAGE - 1:
        cursor, pages = json.loads(get(port, "/api/v1/runs?" + urlencode({"limit": 50, "cursor": cursor}))[2])[
            "next_cursor"], pages + 1
    if cursor is None:
        raise SystemExit(f"the runs list ended after {pages} pages of 50: give a store of {DEEP_PAGE * 50}+ runs")
    return str(cursor)


def api_rows(data: Data, url: str, port: int, static_port: int, static_dir: Path, repeat: int) -> list[Row]:
    """(a) and (c), and the server time of the HTML pages: each beside the same reads through the store's
    driver and a static copy of its answer served by http.server."""
    direct = Direct(url)
    deep = direct.offset_key((DEEP_PAGE - 1) * 50)
    big = quote(data.big_run_id)
    few = max(3, repeat // 5)
    cases = [
        Case("API runs list, first page (50 of 10,000 runs)", "/api/v1/runs?limit=50", direct.page, 50, repeat),
        Case(f"API runs list, page {DEEP_PAGE} (runs {(DEEP_PAGE - 1) * 50 + 1:,}-{DEEP_PAGE * 50:,}) by cursor",
             "/api/v1/runs?" + urlencode({"limit": 50, "cursor": deep_cursor(port)}),
             lambda: direct.page("after", **deep), 50, repeat),
        Case("API runs list of a rare pipeline (nightly_etl, 3 % of runs)", "/api/v1/runs?pipeline=nightly_etl",
             lambda: direct.page("pipeline", pipeline="nightly_etl"), 50, repeat),
        Case("API runs list of a common pipeline (hourly_sync, 60 %)", "/api/v1/runs?pipeline=hourly_sync",
             lambda: direct.page("pipeline", pipeline="hourly_sync"), 50, repeat),
        Case("API runs list by state (CANCELLED, 0.3 %)", "/api/v1/runs?state=CANCELLED",
             lambda: direct.page("state", state="CANCELLED"), 50, repeat),
        Case("API pipelines list (4, each with its last run)", "/api/v1/pipelines", direct.last_runs, 50, repeat),
        Case("API run detail of the 5,000-job run", f"/api/v1/runs/{big}", lambda: direct.detail(data.big_run_id),
             500, few),
        Case("HTML page `/` (pipelines), server time", "/", None, None, repeat),
        Case("HTML page `/runs` (first page), server time", "/runs", None, None, repeat),
        Case("HTML page of the 5,000-job run, server time", f"/runs/{big}", None, None, few),
    ]
    rows: list[Row] = []
    for index, case in enumerate(cases):
        measured, body = timed_get(port, case.path, case.repeat)
        (static_dir / f"case{index}").write_bytes(body)
        static, _ = timed_get(static_port, f"/case{index}", case.repeat)
        size = f"{len(body) / 2**20:.1f} MB" if len(body) >= 2**20 else f"{len(body) / 1024:.0f} kB"
        floor = str(timed_call(case.direct, case.repeat)) if case.direct is not None else "-"
        rows.append(Row(f"{case.label}, {size}", str(measured), floor, str(static),
                        "-" if case.goal is None else f"<= {case.goal:.0f} ms",
                        None if case.goal is None else measured.median <= case.goal))
    return rows


def page_rows(data: Data, port: int, static_port: int, static_dir: Path, loads: int) -> list[Row]:
    """(b): the 5,000-job run's page in Chromium, beside plain HTML of the same size from http.server."""
    ours = page_loads(f"http://127.0.0.1:{port}/runs/{quote(data.big_run_id)}", loads)
    (static_dir / "page.html").write_bytes(static_html(ours.document_bytes))
    static = page_loads(f"http://127.0.0.1:{static_port}/page.html", loads)

    def ms(value: float) -> str:
        return f"{value:.0f} ms"

    return [
        Row("run page of the 5,000-job run: time to first byte", ms(ours.ttfb), "-", ms(static.ttfb), "-", None),
        Row("... first paint / first contentful paint", f"{ms(ours.fp)} / {ms(ours.fcp)}", "-",
            f"{ms(static.fp)} / {ms(static.fcp)}", "FCP <= 1000 ms", ours.fcp <= 1000),
        Row("... DOMContentLoaded / load", f"{ms(ours.dcl)} / {ms(ours.load)}", "-",
            f"{ms(static.dcl)} / {ms(static.load)}", "-", None),
        Row(f"... interactive (long tasks {ours.long_tasks_ms:.0f} ms; {ours.fetches} script requests); slowest load",
            f"{ms(ours.tti)}; {ms(ours.tti_high)}", "-", f"{ms(static.tti)}; {ms(static.tti_high)}",
            "<= 1000 ms (issue)", ours.tti <= 1000),
        Row("... page size: HTML / all transferred; DOM elements",
            f"{ours.document_bytes / 1024:.0f} kB / {ours.transferred / 1024:.0f} kB; {ours.elements:,}", "-",
            f"{static.document_bytes / 1024:.0f} kB / {static.transferred / 1024:.0f} kB; {static.elements:,}",
            "-", None),
    ]


def table(rows: list[Row]) -> str:
    """A Markdown table, to paste into the README as it is."""
    lines = ["| measure | jobgraph web | same SQL, driver only | same bytes, http.server | goal | met? |",
             "|---" * 6 + "|"]
    for row in rows:
        met = "-" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.measure} | {row.ours} | {row.direct} | {row.static} | {row.goal} | {met} |")
    return "\n".join(lines)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "")
    return f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="the generated store's folder, made on first use "
                                                  "[default: a temporary folder]")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--big-jobs", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per API case [default 30]")
    parser.add_argument("--loads", type=int, default=5, help="timed page loads [default 5]")
    parser.add_argument("--only", nargs="*", choices=("api", "page"), help="run only these cases")
    parser.add_argument("--postgres", metavar="URL",
                        help="also serve the store from this empty PostgreSQL database (copied from the SQLite one)")
    parser.add_argument("--web-command", help="the server to measure, with {store} and {port} "
                                              "[default: jobgraph web --store {store} --port {port}]")
    args = parser.parse_args()
    cases = set(args.only or ("api", "page"))
    with tempfile.TemporaryDirectory(prefix="jobgraph-bench-web-") as tmp:
        data = data_in(args.data or Path(tmp) / "data", args.runs, args.big_jobs)
        stores = [("SQLite", data.url)]
        if args.postgres:
            copy_store(data.url, args.postgres, say=lambda text: print(text, file=sys.stderr))
            stores.append(("PostgreSQL", args.postgres))
        static_dir = Path(tmp) / "static"
        static_dir.mkdir()
        static_port = free_port()
        load_before = os.getloadavg()
        sections: list[tuple[str, list[Row]]] = []
        static_server = [sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1",
                         "--directory", str(static_dir)]
        env = {**os.environ, "JOBGRAPH_HOME": str(Path(tmp) / "home")}
        env.pop("JOBGRAPH_STORE", None)
        with serving(static_server, static_port, "/"):
            for backend, url in stores:
                port = free_port()
                template = shlex.split(args.web_command) if args.web_command else [
                    *jobgraph_command(), "web", "--store", "{store}", "--port", "{port}"]
                command = [part.replace("{store}", url).replace("{port}", str(port)) for part in template]
                rows: list[Row] = []
                with serving(command, port, "/healthz", env):
                    if "api" in cases:
                        rows += api_rows(data, url, port, static_port, static_dir, args.requests)
                    if "page" in cases:
                        rows += page_rows(data, port, static_port, static_dir, args.loads)
                sections.append((backend, rows))
        load_after = os.getloadavg()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}; {data.summary}; medians of {args.requests} "
          f"requests (run detail: {max(3, args.requests // 5)}) and {args.loads} page loads after a warm-up, "
          f"(min-max); load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    for backend, rows in sections:
        print(f"\nstore: {backend}\n")
        print(table(rows))


if __name__ == "__main__":
    main()
