"""What the run page shows, read from the store once per request: the graph, one page of jobs, their attempts.

A run of 5,000 jobs must stay a light page: the graph is folded (web/layout.py), the jobs list and
the Gantt show one page of jobs (PAGE_SIZE, failures first if asked), and only that page's attempts
are drawn. The same parts are rendered again, alone, when the page's event stream says the run changed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup

from jobgraph.store import Store
from jobgraph.store.records import AttemptRecord, RunRecord, TaskRecord
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


def run_view(records: Store, run_id: str, page: int = 1, order: str = "graph") -> RunView:
    """The run (by id or unique prefix), its folded graph coloured by state, and one page of its jobs."""
    run = records.run(run_id)
    jobs = records._full().tasks(run.run_id)  # through SQLAlchemy's pool: safe from the server's worker threads
    drawn = layout([(job.task, job.predecessors) for job in jobs])
    states = {job.task: str(job.state) for job in jobs}
    place = {name: (drawn.nodes[i].layer, drawn.nodes[i].y, name) for name, i in drawn.node_of.items()}
    if order == "failed":
        jobs.sort(key=lambda job: (_FAILURES_FIRST.get(job.state, 9), place[job.task]))
    else:
        jobs.sort(key=lambda job: place[job.task])
    pages = max(1, -(-len(jobs) // PAGE_SIZE))
    page = min(max(page, 1), pages)
    listed = jobs[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    shown = {job.task for job in listed}
    attempts = [a for a in records.attempts(run.run_id) if a.task in shown]
    by_job: dict[str, list[AttemptRecord]] = {name: [] for name in shown}
    for attempt in attempts:
        by_job[attempt.task].append(attempt)
    now = datetime.now(UTC)
    return RunView(
        run=run, counts=dict(sorted(Counter(states.values()).items())), total=len(jobs),
        graph=graph_svg(drawn, states), gantt=gantt_svg([job.task for job in listed], attempts, now),
        rows=[JobRow(job, by_job[job.task]) for job in listed], page=page, pages=pages, order=order,
    )
