"""What the run page shows, read from the store once per request: the graph, one page of jobs, their attempts.

A run of 5,000 jobs must stay a light page: the graph is folded (web/layout.py), the jobs list and
the Gantt show one page of jobs (PAGE_SIZE, failures first if asked), and only that page's attempts
are drawn. The same parts are rendered again, alone, when the page's event stream says the run changed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from markupsafe import Markup
from sqlalchemy import select

from jobgraph.states import AttemptStatus
from jobgraph.store import Store
from jobgraph.store.records import AttemptRecord, RunRecord, TaskRecord, aware, task_record
from jobgraph.store.tables import attempts as attempts_table
from jobgraph.store.tables import task_runs
from jobgraph.web.gantt import gantt_svg
from jobgraph.web.graph_svg import graph_svg
from jobgraph.web.layout import layout

PAGE_SIZE = 200
ORDERS = ("graph", "failed")
"""How the jobs list is ordered: as the graph runs (layer by layer), or failed, cancelled and skipped first."""

_FAILURES_FIRST = {"FAILED": 0, "CANCELLED": 1, "SKIPPED": 2, "RUNNING": 3}


@dataclass(frozen=True)
class JobRow:
    """A job of the listed page, with its attempts (oldest first)."""

    job: TaskRecord
    attempts: list[AttemptRecord]


@dataclass(frozen=True)
class RunView:
    """Everything the run page draws."""

    run: RunRecord
    counts: dict[str, int]
    total: int
    graph: Markup
    gantt: Markup
    rows: list[JobRow]
    page: int
    pages: int
    order: str


def run_view(records: Store, run_id: str, page: int = 1, order: str = "graph", job: str | None = None) -> RunView:
    """The run (by id or unique prefix), its folded graph coloured by state, and one page of its jobs: the
    page that lists `job` when it is given (a click on a graph node whose job is on another page)."""
    run = records.run(run_id)
    shapes, copies = _job_shapes(records, run.run_id)
    drawn = layout([(name, after) for name, (_, after) in shapes.items() if name not in copies])
    states = {name: state for name, (state, _) in shapes.items()}
    place = {name: (drawn.nodes[i].layer, drawn.nodes[i].y, name, -1) for name, i in drawn.node_of.items()}
    fanned: dict[str, list[str]] = {}
    for name, (job, index) in copies.items():  # a copy is listed, and drawn, with its job
        if job in place:
            place[name] = (*place[job][:3], index)
            fanned.setdefault(job, []).append(name)
    names = sorted((name for name in states if name in place), key=lambda name: place[name])
    if order == "failed":
        names.sort(key=lambda name: _FAILURES_FIRST.get(states[name], 9))
    pages = max(1, -(-len(names) // PAGE_SIZE))
    if job in states:
        page = names.index(job) // PAGE_SIZE + 1
    page = min(max(page, 1), pages)
    listed = names[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    jobs, attempts = _page_records(records, run.run_id, listed)
    by_job: dict[str, list[AttemptRecord]] = {name: [] for name in listed}
    for attempt in attempts:
        by_job[attempt.task].append(attempt)
    now = datetime.now(UTC)
    return RunView(
        run=run, counts=dict(sorted(Counter(states.values()).items())), total=len(names),
        graph=graph_svg(drawn, states, fanned), gantt=gantt_svg(listed, attempts, now),
        rows=[JobRow(jobs[name], by_job[name]) for name in listed if name in jobs], page=page, pages=pages,
        order=order,
    )


Shapes = dict[str, tuple[str, tuple[str, ...]]]
"""Each job's state and predecessors."""


def _job_shapes(records: Store, run_id: str) -> tuple[Shapes, dict[str, tuple[str, int]]]:
    """Every job's state and predecessors as they stand now (its row of the latest run attempt that ran it):
    the columns the graph needs, not the whole rows (a 5,000-job run reads in a fraction of the time); and
    each fanned-out job's copy (`load[3]`, a row with an item) with its job and index."""
    query = select(task_runs.c.task, task_runs.c.run_attempt, task_runs.c.state, task_runs.c.predecessors,
                   task_runs.c.item.is_not(None)).where(task_runs.c.run_id == run_id).order_by(task_runs.c.run_attempt)
    with records.engine.connect() as conn:  # the pool gives each of the server's threads its own connection
        rows = conn.execute(query).all()
    copies: dict[str, tuple[str, int]] = {}
    for task, _, _, _, is_copy in rows:
        job, _, index = task[:-1].rpartition("[")
        if is_copy and index.isdigit():
            copies[task] = (job, int(index))
    return {task: (state, tuple(json.loads(after))) for task, _, state, after, _ in rows}, copies


def _page_records(records: Store, run_id: str,
                  names: list[str]) -> tuple[dict[str, TaskRecord], list[AttemptRecord]]:
    """The whole rows of the listed jobs only (latest run attempt of each), and their attempts, oldest first."""
    with records.engine.connect() as conn:
        jobs = {record.task: record for record in (task_record(row) for row in conn.execute(
            select(task_runs).where(task_runs.c.run_id == run_id, task_runs.c.task.in_(names))
            .order_by(task_runs.c.run_attempt)).mappings())}
        attempts = [AttemptRecord(
            task=row["task"], attempt=row["attempt"], status=AttemptStatus(row["status"]),
            exit_code=row["exit_code"], error=row["error"], log_path=Path(row["log_path"]),
            started_at=aware(row["started_at"]), finished_at=aware(row["finished_at"]),
            duration_secs=row["duration_secs"], run_attempt=row["run_attempt"], runner=row["runner"],
        ) for row in conn.execute(select(attempts_table).where(
            attempts_table.c.run_id == run_id, attempts_table.c.task.in_(names)).order_by(attempts_table.c.id))
            .mappings()]
    return jobs, attempts
