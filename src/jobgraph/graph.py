"""The DAG of a pipeline: who runs after whom, how far each job is from the end, and what depends on what."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Dag:
    """An acyclic graph of job names (the config layer has already rejected cycles).

    `rank` is the number of jobs on the longest path from a job to the end, itself included: the
    engine starts the highest rank first so the critical path is never starved.
    """

    order: tuple[str, ...]
    predecessors: dict[str, tuple[str, ...]]
    successors: dict[str, tuple[str, ...]]
    rank: dict[str, int]

    @classmethod
    def build(cls, edges: Iterable[tuple[str, Sequence[str]]]) -> Dag:
        """Build from (name, predecessors) pairs, in O(jobs + edges)."""
        predecessors = {name: tuple(after) for name, after in edges}
        successors: dict[str, list[str]] = {name: [] for name in predecessors}
        for name, after in predecessors.items():
            for predecessor in after:
                successors[predecessor].append(name)
        order = _topological(predecessors, successors)
        rank: dict[str, int] = {}
        for name in reversed(order):
            rank[name] = 1 + max((rank[s] for s in successors[name]), default=0)
        return cls(order, predecessors, {n: tuple(s) for n, s in successors.items()}, rank)

    def levels(self) -> list[list[str]]:
        """Jobs grouped by depth, each level in file order: level 0 has no predecessor, level n runs after n-1."""
        depth: dict[str, int] = {}
        for name in self.order:
            depth[name] = 1 + max((depth[p] for p in self.predecessors[name]), default=-1)
        grouped: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for name in self.predecessors:
            grouped[depth[name]].append(name)
        return grouped

    def descendants(self, name: str) -> list[str]:
        """Every job that runs after `name`, directly or not (Snowflake's task_dependents, recursive)."""
        seen: set[str] = set()
        stack = list(self.successors[name])
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.successors[current])
        return [n for n in self.order if n in seen]

    def ancestors(self, name: str) -> list[str]:
        """Every job that `name` runs after, directly or not (what `--until` runs before it)."""
        seen: set[str] = set()
        stack = list(self.predecessors[name])
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.predecessors[current])
        return [n for n in self.order if n in seen]


def _topological(predecessors: dict[str, tuple[str, ...]], successors: dict[str, list[str]]) -> tuple[str, ...]:
    waiting = {name: len(after) for name, after in predecessors.items()}
    ready = deque(name for name, count in waiting.items() if count == 0)
    order: list[str] = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for successor in successors[name]:
            waiting[successor] -= 1
            if waiting[successor] == 0:
                ready.append(successor)
    if len(order) != len(predecessors):
        raise ValueError("the graph has a cycle")
    return tuple(order)
