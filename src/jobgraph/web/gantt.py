"""A Gantt chart of a run's attempts as inline SVG: one row per job, one bar per attempt, on one time axis.

Retries are what a user looks for in it: a failed attempt is red and crossed, and the wait before the
next attempt (the job's retry delay, or the time until someone retried the run) is a dashed line, so
a job that failed twice then succeeded reads at a glance. Drawn on the server: a bar is a rect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

from jobgraph.store.records import AttemptRecord

LABEL_W, CHART_W, ROW_H, AXIS_H = 180, 720, 20, 24
_LABEL_CHARS = 24


def gantt_svg(rows: Sequence[str], attempts: Sequence[AttemptRecord], now: datetime) -> Markup:
    """The chart of the jobs named in `rows` (top to bottom), from the first attempt's start to the last end."""
    shown = set(rows)
    mine = [a for a in attempts if a.task in shown]
    if not mine:
        return Markup('<p class="empty">no attempt has started yet</p>')
    start = min(a.started_at for a in mine)
    end = max(a.finished_at or now for a in mine)
    span = max((end - start).total_seconds(), 1.0)
    scale = CHART_W / span
    height = AXIS_H + len(rows) * ROW_H + 4
    parts = [f'<svg class="gantt" xmlns="http://www.w3.org/2000/svg" width="{LABEL_W + CHART_W + 10}" '
             f'height="{height}" viewBox="0 0 {LABEL_W + CHART_W + 10} {height}" role="img" '
             f'aria-label="attempts over time">']
    step = _tick(span)
    tick = 0.0
    while tick <= span + 1e-9:
        x = LABEL_W + tick * scale
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{height}"/>'
                     f'<text class="axis" x="{x:.1f}" y="{AXIS_H - 8}">{_axis_label(tick, start)}</text>')
        tick += step
    by_job: dict[str, list[AttemptRecord]] = {}
    for attempt in mine:
        by_job.setdefault(attempt.task, []).append(attempt)
    for row, job in enumerate(rows):
        y = AXIS_H + row * ROW_H
        parts.append(f'<text class="label" x="4" y="{y + 14}">{escape(_short(job))}<title>{escape(job)}</title></text>')
        previous: AttemptRecord | None = None
        for attempt in sorted(by_job.get(job, ()), key=lambda a: (a.run_attempt, a.attempt)):
            x1 = LABEL_W + (attempt.started_at - start).total_seconds() * scale
            x2 = LABEL_W + ((attempt.finished_at or now) - start).total_seconds() * scale
            if previous is not None and previous.finished_at is not None:
                px = LABEL_W + (previous.finished_at - start).total_seconds() * scale
                waited = (attempt.started_at - previous.finished_at).total_seconds()
                parts.append(f'<line class="wait" x1="{px:.1f}" y1="{y + 10}" x2="{x1:.1f}" y2="{y + 10}">'
                             f'<title>waited {_seconds(waited)} before attempt {attempt.attempt}</title></line>')
            parts.append(_bar(job, attempt, x1, max(x2 - x1, 2.0), y, now))
            previous = attempt
    parts.append("</svg>")
    return Markup("".join(parts))


def _bar(job: str, attempt: AttemptRecord, x: float, width: float, y: int, now: datetime) -> str:
    """One attempt's rect (a cross on it if it failed), named in its title, clickable for its log."""
    took = ((attempt.finished_at or now) - attempt.started_at).total_seconds()
    exit_text = "" if attempt.exit_code is None else f", exit {attempt.exit_code}"
    title = f"{job} attempt {attempt.attempt}: {attempt.status}{exit_text}, {_seconds(took)}"
    bar = (f'<g class="attempt a-{escape(attempt.status)}" data-job="{escape(job)}" data-attempt="{attempt.attempt}">'
           f'<title>{escape(title)}</title>'
           f'<rect x="{x:.1f}" y="{y + 3}" width="{width:.1f}" height="{ROW_H - 6}" rx="2"/>')
    if attempt.status not in ("DONE", "RUNNING"):
        cx = x + width / 2
        bar += (f'<path class="cross" d="M{cx - 4:.1f},{y + 6} l8,8 M{cx + 4:.1f},{y + 6} l-8,8"/>')
    return bar + "</g>"


_CLOCK_STEPS = (10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0, 7200.0,
                10800.0, 21600.0, 43200.0, 86400.0)
"""Steps past 10 s that read as a clock does: seconds, then whole minutes, then whole hours."""


def _tick(span: float) -> float:
    """A round step giving about 8 ticks over the span: 1, 2 or 5 times a power of ten below 10 s, then a
    clock's step (15 s, 1 min, 5 min, 1 h ...)."""
    raw = span / 8
    if raw > 10:
        return next((step for step in _CLOCK_STEPS if step >= raw), 86400.0 * math.ceil(raw / 86400))
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)


def _axis_label(tick: float, start: datetime) -> str:
    """The axis's first tick is the clock time it starts at (UTC, as every time on the page); the others count
    from there."""
    return start.astimezone(UTC).strftime("%H:%M:%S UTC") if tick == 0 else f"+{_seconds(tick)}"


def _seconds(value: float) -> str:
    """A duration as people read it: 0.4 s, 12 s, 3 min 5 s, 1 min, 2 h 10 min."""
    if value < 10:
        return f"{value:.1f} s"
    if value < 60:
        return f"{value:.0f} s"
    if value < 3600:
        minutes, seconds = int(value // 60), int(value % 60)
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = int(value // 3600), int(value % 3600 // 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _short(name: str) -> str:
    return name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"
