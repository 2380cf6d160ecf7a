"""Dynamic fan-out: a job with `for_each` runs once per item, as copies `job[0]`, `job[1]`, ...

Argo's withItems/withParam and Airflow's dynamic task mapping, in jobgraph's terms. When the job
becomes ready its list is read (the literal, the run's parameter, or a predecessor's return value,
a JSON list) and each item becomes a copy: a job of its own for the pool, the retries, the log and
the store (a task_runs row whose `item` holds the item's JSON), with `{{ item }}` in its args and
env. The job itself is RUNNING while its copies run and ends SUCCEEDED once all of them did (its
return value: the copies' values as a JSON list), FAILED if any did not, so its dependents wait for
every copy and follow their trigger rule. A list that cannot be read, is not a list or is wider
than `max_fan_out` fails the job with the reason; an empty list succeeds with no copies.

A retry (or a lost run resumed) expands the job again and keeps each copy whose earlier state is
kept and whose item at the same index is the same: a retry reruns the failed copies, and a list that
changed meanwhile (a predecessor ran again) reruns what changed. A job cleared by `retry --job` runs
every copy again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobgraph.config.for_each import max_fan_out, source_of, unusable_text
from jobgraph.config.model import MAX_FAN_OUT, Job
from jobgraph.engine.events import JobsExpanded, TaskInfo
from jobgraph.states import TaskState

SHOWN_FAILURES = 5
"""How many copies that did not succeed the job's reason names."""


class FanOutError(ValueError):
    """The job's list cannot be had: why, as its FAILED reason says it."""


@dataclass(frozen=True)
class Kept:
    """An earlier state of a copy, as a retry sees it."""

    state: TaskState
    item: str | None
    return_value: str | None


@dataclass
class Expansion:
    """One fanned-out job's copies in this run, and how many are still to end."""

    job: str
    copies: list[Job]
    items: list[str]
    """Each copy's item as JSON text (what task_runs.item holds)."""
    values: list[Any]
    """Each copy's item itself (what `{{ item }}` renders)."""
    kept: dict[str, Kept] = field(default_factory=dict)
    left: int = 0
    states: dict[str, TaskState] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    """Copies an earlier attempt of the run had beyond this list's end (it got shorter): recorded SKIPPED."""

    @property
    def to_run(self) -> list[Job]:
        """The copies this run runs: all but those kept from before."""
        return [copy for copy in self.copies if copy.name not in self.kept]


class FanOuts:
    """The fanned-out jobs of one run: which job and item each copy has, and how many of each job's copies are
    still to end. `earlier`: the copies of an earlier attempt of the run, of which those in a state in `keep`
    are kept (for the same item)."""

    def __init__(self, run_id: str, run_attempt: int, earlier: Mapping[str, Kept], keep: frozenset[TaskState]) -> None:
        self._run_id = run_id
        self._run_attempt = run_attempt
        self._earlier = earlier
        self._kept = {name: copy for name, copy in earlier.items() if copy.state in keep}
        self._copy_of: dict[str, tuple[Expansion, int]] = {}

    def expand(self, job: Job, items: list[Any], attempts: Mapping[str, int],
               keep: bool = True) -> tuple[Expansion, JobsExpanded]:
        """The job's copies for `items` and the event that records those to run (`attempts`: how often each ran),
        and those an earlier attempt had past the list's end (the `dropped`, to be recorded SKIPPED).

        `keep`: whether copies may be kept from before at all; not when the job is rerun although it had
        succeeded (`retry --job`, like Airflow's clear: all of it runs again)."""
        expansion = expand(job, items, self._kept if keep else {})
        running = expansion.to_run
        for index, copy in enumerate(expansion.copies):
            if copy.name not in expansion.kept:
                self._copy_of[copy.name] = (expansion, index)
        index = len(items)
        while (name := copy_name(job.name, index)) in self._earlier:
            if self._earlier[name].state != TaskState.SKIPPED:
                expansion.dropped.append(name)
            index += 1
        shown = [*running, *(job.model_copy(update={"name": name}) for name in expansion.dropped)]
        texts = [*(expansion.items[self._copy_of[copy.name][1]] for copy in running),
                 *(self._earlier[name].item or "null" for name in expansion.dropped)]
        return expansion, JobsExpanded(
            self._run_id, job.name, tuple(TaskInfo(c.name, c.pool or "", c.image, c.after) for c in shown),
            tuple(texts), self._run_attempt, tuple(attempts.get(copy.name, 0) for copy in shown))

    @property
    def copies(self) -> list[str]:
        """Every copy this run runs."""
        return list(self._copy_of)

    def item(self, name: str) -> tuple[bool, Any]:
        """(True, its item) for a copy; (False, None) for any other job."""
        found = self._copy_of.get(name)
        return (False, None) if found is None else (True, found[0].values[found[1]])

    def copy_ended(self, name: str, state: TaskState) -> Expansion | None:
        """Note how a job ended; the expansion of its job when it was that job's last copy to end."""
        found = self._copy_of.get(name)
        if found is None:
            return None
        expansion = found[0]
        expansion.states[name] = state
        expansion.left -= 1
        return expansion if expansion.left == 0 else None

    def is_copy(self, name: str) -> bool:
        """Whether `name` is a copy this run runs."""
        return name in self._copy_of


class Unknown(str):
    """An item not known before the run, as `jobgraph plan` shows a fanned-out job: `<item>`, `<item.path>`.

    A text that also answers every key (template.py walks it as a mapping), so any `{{ item.x.y }}` renders.
    """

    path: str

    def __new__(cls, path: str) -> Unknown:
        made = super().__new__(cls, f"<{path}>")
        made.path = path
        return made

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: object) -> Unknown:
        return Unknown(f"{self.path}.{key}")


Mapping.register(Unknown)


def planned_item(job: Job) -> Any:
    """The item a fanned-out job's first copy would get, as far as it is known before the run."""
    if isinstance(job.for_each, tuple) and job.for_each:
        return job.for_each[0]
    return Unknown("item")


def job_named(jobs: Mapping[str, Job], task: str) -> Job | None:
    """A job of a pipeline by name, or a fanned-out job's copy (`load[3]`) as its job under the copy's name
    (recovery finds a lost run's remote attempts by name; a copy's item is not known there)."""
    found = jobs.get(task)
    if found is not None or not task.endswith("]"):
        return found
    base, _, index = task[:-1].rpartition("[")
    job = jobs.get(base)
    if job is None or job.for_each is None or not index.isdigit():
        return None
    return job.model_copy(update={"name": task})


def copy_name(job: str, index: int) -> str:
    """The name of a job's copy: `extract[3]`."""
    return f"{job}[{index}]"


def item_text(value: Any) -> str:
    """An item as the store keeps it: its JSON, compact."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def as_env(value: Any) -> str:
    """An item as `{{ item }}` and JOBGRAPH_ITEM give it: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else item_text(value)


def items_of(job: Job, params: Mapping[str, Any], values: Mapping[str, str], cut_at: int | None = None) -> list[Any]:
    """The job's list: its literal, the run's parameter, or a predecessor's return value (`values`, by job;
    `cut_at`: the bytes a return value keeps, so a list cut there is said to be cut, not just "not JSON").

    FanOutError says why there is none: a value that is missing, not JSON, not a list, or too long.
    """
    assert job.for_each is not None
    source = source_of(job.for_each)
    if source.literal is not None:
        items = list(source.literal)
    elif source.param is not None:
        items = _as_list(params.get(source.param), f"parameter {source.param}", missing="the run has no value for it")
    else:
        name = next((p for p in job.after if p.casefold() == (source.predecessor or "").casefold()), "")
        items = _as_list(values.get(name), f"the return value of {name}",
                         missing=f"{name} returned no value (it writes a JSON list to $JOBGRAPH_RETURN_VALUE_FILE)",
                         cut_at=cut_at)
    limit = max_fan_out(job)
    if len(items) > limit:
        raise FanOutError(f"for_each has {len(items)} items, more than max_fan_out {limit}"
                          + (f" (set max_fan_out, at most {MAX_FAN_OUT})" if limit < MAX_FAN_OUT else ""))
    return items


def _as_list(value: Any, what: str, missing: str, cut_at: int | None = None) -> list[Any]:
    if value is None:
        raise FanOutError(f"for_each: {missing}")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as exc:  # a job's return value may nest without end
            shown = value if len(value) <= 60 else value[:57] + "..."
            cut = cut_at is not None and len(value.encode(errors="replace")) >= cut_at - 4  # the read's own cut
            if cut and isinstance(exc, json.JSONDecodeError):
                raise FanOutError(f"for_each: {what} was cut at {cut_at:,} bytes, the most a return value keeps, so "
                                  "it is not JSON (write a shorter list, or the items to a file and its path as the "
                                  f"return value): {shown!r}") from None
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
            raise FanOutError(f"for_each: {what} is not JSON ({why}): {shown!r}") from None
    if not isinstance(value, list | tuple):
        raise FanOutError(f"for_each: {what} is {_kind(value)}, not a list")
    for index, item in enumerate(value):
        _check_text(item, f"item {index} of {what}")
    return list(value)


def _check_text(item: Any, what: str) -> None:
    """FanOutError if an item holds text that no store, argument or variable can (a lone surrogate, a NUL):
    JSON may spell both (`"\\ud800"`, `"\\u0000"`); the item is recorded, and it becomes an argument."""
    why = unusable_text(item)
    if why is not None:
        raise FanOutError(f"for_each: {what} {why}")


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def expand(job: Job, items: list[Any], prior: Mapping[str, Kept]) -> Expansion:
    """The copies of `job` for `items`; those `prior` keeps (same index, same item) are not run again."""
    texts = [item_text(item) for item in items]
    copies = [job.model_copy(update={"name": copy_name(job.name, i), "for_each": None, "max_fan_out": None})
              for i in range(len(items))]
    kept = {copy.name: prior[copy.name] for copy, text in zip(copies, texts, strict=True)
            if copy.name in prior and prior[copy.name].item == text}
    expansion = Expansion(job.name, copies, texts, items, kept)
    expansion.left = len(copies) - len(kept)
    expansion.states = {name: k.state for name, k in kept.items()}
    return expansion


def outcome(expansion: Expansion, values: Mapping[str, str], limit: int) -> tuple[TaskState, str | None, str | None]:
    """How the fanned-out job ends once every copy has: its state, reason and return value.

    The return value is the copies' values as a JSON list (null for a copy that returned none), when
    any returned one and the list fits in `limit` bytes (the cap of every return value).
    """
    names = [copy.name for copy in expansion.copies]
    if not names:
        return TaskState.SUCCEEDED, "for_each gave an empty list: no copies ran", None
    bad = [name for name in names if expansion.states.get(name) != TaskState.SUCCEEDED]
    if bad:
        states = [expansion.states.get(name, TaskState.CANCELLED) for name in bad]
        state = TaskState.CANCELLED if all(s == TaskState.CANCELLED for s in states) else TaskState.FAILED
        shown = ", ".join(f"{name} {s}" for name, s in zip(bad[:SHOWN_FAILURES], states, strict=False))
        more = f", and {len(bad) - SHOWN_FAILURES} more" if len(bad) > SHOWN_FAILURES else ""
        return state, f"{len(bad)} of {len(names)} copies did not succeed: {shown}{more}", None
    returned = [values.get(name) for name in names]
    if all(value is None for value in returned):
        return TaskState.SUCCEEDED, None, None
    joined = json.dumps(returned, ensure_ascii=False)
    return TaskState.SUCCEEDED, None, joined if len(joined.encode()) <= limit else None
