"""Where a run's time goes beyond the optimum, read from the store's records of its attempts.

A run's wall time is split along its critical chain: start-up (the command's launch to the first
attempt's start), each job on the chain (its attempt's own time: the command, its spawn and its
reaping), the lag before each job on the chain started once it could (its last predecessor ended,
or, in a full pool, a slot freed), and the end (the last attempt's end to the command's exit:
the finalizer, the closing summary, the store's close).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobgraph.store import Store


@dataclass(frozen=True)
class Span:
    """One job's attempt, in seconds since the command's launch."""

    task: str
    start: float
    end: float


def spans(store_url: str, launched: float) -> list[Span]:
    """The attempts of the store's newest run, in start order."""
    with Store(store_url) as records:
        run = records.runs(limit=1)[0]
        attempts = records.attempts(run.run_id)
    return sorted((Span(a.task, a.started_at.timestamp() - launched, a.finished_at.timestamp() - launched)
                   for a in attempts if a.finished_at is not None), key=lambda s: s.start)


def trigger(span: Span, preds: list[Span], others: list[Span], first: float) -> tuple[float, str]:
    """When, and by what, `span` could have started: its last predecessor's end, or a slot freeing after that.

    A job that became ready while the pool was full (or about to be filled by jobs ranked before it)
    starts when a slot frees: the last end of another attempt between its being ready and its start.
    """
    ready, why = max(((p.end, f"{p.task} ended") for p in preds), default=(first, "the run began"))
    freed = [o for o in others if ready < o.end <= span.start]
    if freed:
        last = max(freed, key=lambda o: o.end)
        return last.end, f"{last.task} ended, freeing a slot"
    return ready, why


def breakdown(db: Path, dag: list[tuple[str, list[str]]], launched: float, exited: float, optimum: float) -> list[str]:
    """Lines that account for every millisecond of the run above `optimum` seconds."""
    edges = dict(dag)
    runs = {s.task: s for s in spans(f"sqlite:///{db}", launched)}
    first = min(s.start for s in runs.values())
    lags: dict[str, tuple[float, str]] = {}
    for name, span in runs.items():
        others = [o for o in runs.values() if o is not span]
        at, why = trigger(span, [runs[p] for p in edges[name]], others, first)
        lags[name] = (span.start - at, why)
    lines = [f"jobgraph's run of the seed's graph, {exited - launched:.3f} s, from its store's records "
             "(seconds since the command's launch):"]
    for name, span in sorted(runs.items(), key=lambda item: item[1].start):
        lag, why = lags[name]
        lines.append(f"  {name}: {span.start:6.3f} -> {span.end:6.3f} ({span.end - span.start:.3f} s), "
                     f"started {lag * 1000:.1f} ms after {why}")
    chain = critical_chain(runs, lags)
    own = sum(runs[n].end - runs[n].start for n in chain)
    lag_total = sum(lags[n][0] for n in chain)
    tail = exited - launched - runs[chain[-1]].end
    lines.append(f"  critical chain {' -> '.join(chain)}: start-up {first * 1000:.0f} ms + jobs "
                 f"{own:.3f} s ({(own - optimum) * 1000:+.0f} ms beyond their {optimum:g} s of sleep: spawn and "
                 f"reaping) + dispatch lags {lag_total * 1000:.1f} ms + end {tail * 1000:.0f} ms "
                 f"= {first + own + lag_total + tail:.3f} s")
    return lines


def critical_chain(runs: dict[str, Span], lags: dict[str, tuple[float, str]]) -> list[str]:
    """From the last job to end back to the first, each step the job whose end let the next one start."""
    current = max(runs, key=lambda n: runs[n].end)
    chain = [current]
    while True:
        why = lags[current][1]
        before = why.split(" ended")[0] if " ended" in why else None
        if before is None or before not in runs:
            return chain[::-1]
        chain.append(before)
        current = before
