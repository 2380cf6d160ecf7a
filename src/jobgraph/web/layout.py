"""Where each job of a run's graph is drawn: a layered layout computed in Python, small whatever the run's size.

Big graphs are what make other tools' pages crawl, so the layout first folds the graph: siblings of
one shape (the same predecessors, once those are folded too) become one node "N jobs", so does a long
chain, and a layer still too wide becomes one node. Then the classic layered drawing: each node in the column of its
longest path from a root, columns ordered by barycenter sweeps to cross few edges. The result depends
only on the graph's structure, so it is cached per structure: a live page redraws states, not layout.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

FOLD_AT = 8
"""Siblings of one shape are folded into one node from this many on (the seed's 3 siblings stay apart)."""

WIDEST_LAYER = 40
"""A layer with more nodes than this, after folding siblings, becomes one node."""

SWEEPS = 4
"""Barycenter sweeps (down then up) that order each layer."""

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 168, 40, 56, 14, 10
"""Sizes in SVG pixels: a node's box, the gaps between layers and between nodes of a layer."""

_CACHE_SIZE = 32


@dataclass(frozen=True)
class Node:
    """One box of the drawing: a job, or a group of jobs folded into one."""

    index: int
    members: tuple[str, ...]
    layer: int
    x: int
    y: int

    @property
    def folded(self) -> bool:
        """True for a group of jobs drawn as one node."""
        return len(self.members) > 1


@dataclass(frozen=True)
class Layout:
    """The folded graph placed on a canvas: nodes, the edges between them (node indexes) and the size."""

    nodes: tuple[Node, ...]
    edges: tuple[tuple[int, int], ...]
    width: int
    height: int
    node_of: dict[str, int]
    """Which node draws each job."""


_cache: OrderedDict[str, Layout] = OrderedDict()


def layout(jobs: Sequence[tuple[str, Sequence[str]]]) -> Layout:
    """The layout of a graph given as (job, its predecessors) pairs; cached by the graph's structure."""
    key = hashlib.sha256(repr(sorted((name, sorted(after)) for name, after in jobs)).encode()).hexdigest()
    found = _cache.get(key)
    if found is not None:
        _cache.move_to_end(key)
        return found
    known = {name for name, _ in jobs}
    after = {name: tuple(p for p in preds if p in known) for name, preds in jobs}
    made = _place(_fold([name for name, _ in jobs], after), after)
    _cache[key] = made
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return made


def _fold(names: list[str], after: dict[str, tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Groups of jobs drawn as one node: same-shaped siblings, long chains, then layers that are still too wide."""
    group = {name: name for name in names}  # each job's group, named by one of its members
    for _ in range(3):  # a fan-out folded lets the chains hanging off it fold on the next pass
        shapes: dict[tuple[str, ...], list[str]] = {}
        for name in names:
            shapes.setdefault(tuple(sorted({group[p] for p in after[name]})), []).append(name)
        changed = False
        for members in shapes.values():
            inside = set(members)
            if len(members) >= FOLD_AT and not any(p in inside for m in members for p in after[m]):
                head = group[members[0]]
                for member in members:
                    changed |= group[member] != head
                    group[member] = head
        if not changed:
            break
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(group[name], []).append(name)
    groups = _fold_chains([tuple(members) for members in grouped.values()], after)
    layer = _layers(groups, _edges(groups, after))
    by_layer: dict[int, list[tuple[str, ...]]] = {}
    for group_members, at in zip(groups, layer, strict=True):
        by_layer.setdefault(at, []).append(group_members)
    result: list[tuple[str, ...]] = []
    for at in sorted(by_layer):
        row = by_layer[at]
        if len(row) > WIDEST_LAYER:  # jobs of one layer never depend on each other: one node holds them all
            result.append(tuple(name for members in row for name in members))
        else:
            result.extend(row)
    return result


def _fold_chains(groups: list[tuple[str, ...]], after: dict[str, tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Long chains (each link the only successor of the one before, and it its only predecessor) as one node."""
    preds = _edges(groups, after)
    succs: list[list[int]] = [[] for _ in groups]
    for i, before in enumerate(preds):
        for p in before:
            succs[p].append(i)

    def linked(i: int) -> bool:
        return len(preds[i]) == 1 and len(succs[preds[i][0]]) == 1

    result: list[tuple[str, ...]] = []
    seen: set[int] = set()
    for start in range(len(groups)):
        if start in seen or linked(start):
            continue
        chain = [start]
        seen.add(start)
        while len(succs[chain[-1]]) == 1 and linked(succs[chain[-1]][0]) and succs[chain[-1]][0] not in seen:
            chain.append(succs[chain[-1]][0])
            seen.add(chain[-1])
        if len(chain) >= FOLD_AT:
            result.append(tuple(name for i in chain for name in groups[i]))
        else:
            result.extend(groups[i] for i in chain)
    result.extend(groups[i] for i in range(len(groups)) if i not in seen)  # links of a cycle: left as they are
    return result


def _edges(groups: Sequence[tuple[str, ...]], after: dict[str, tuple[str, ...]]) -> list[list[int]]:
    """Each group's predecessor groups (indexes), once each."""
    owner = {name: i for i, members in enumerate(groups) for name in members}
    return [sorted({owner[p] for m in members for p in after[m]} - {i}) for i, members in enumerate(groups)]


def _layers(groups: Sequence[tuple[str, ...]], preds: list[list[int]]) -> list[int]:
    """Each group's layer: the length of the longest path to it from a root (Kahn's order; no recursion)."""
    succs: list[list[int]] = [[] for _ in groups]
    for i, before in enumerate(preds):
        for p in before:
            succs[p].append(i)
    waiting = [len(before) for before in preds]
    layer = [0] * len(groups)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    while ready:
        i = ready.pop()
        for s in succs[i]:
            layer[s] = max(layer[s], layer[i] + 1)
            waiting[s] -= 1
            if waiting[s] == 0:
                ready.append(s)
    return layer


def _place(groups: list[tuple[str, ...]], after: dict[str, tuple[str, ...]]) -> Layout:
    """Layers as columns, each ordered by barycenter sweeps (few crossings), then pixel positions."""
    preds = _edges(groups, after)
    succs: list[list[int]] = [[] for _ in groups]
    for i, before in enumerate(preds):
        for p in before:
            succs[p].append(i)
    layer = _layers(groups, preds)
    columns: list[list[int]] = [[] for _ in range(max(layer, default=-1) + 1)]
    for i in sorted(range(len(groups)), key=lambda i: groups[i][0]):
        columns[layer[i]].append(i)
    rank = [0.0] * len(groups)
    for column in columns:
        for position, i in enumerate(column):
            rank[i] = position
    for sweep in range(SWEEPS):
        downward = sweep % 2 == 0
        for column in columns[1:] if downward else reversed(columns[:-1]):
            neighbours = preds if downward else succs
            centre = {i: sum(rank[n] for n in neighbours[i]) / len(neighbours[i]) if neighbours[i] else rank[i]
                      for i in column}
            column.sort(key=lambda i: centre[i])
            for position, i in enumerate(column):
                rank[i] = position
    tallest = max((len(column) for column in columns), default=0)
    height = MARGIN * 2 + tallest * NODE_H + max(tallest - 1, 0) * GAP_Y
    nodes: list[Node | None] = [None] * len(groups)
    for at, column in enumerate(columns):
        top = MARGIN + (height - 2 * MARGIN - (len(column) * NODE_H + (len(column) - 1) * GAP_Y)) // 2
        for position, i in enumerate(column):
            nodes[i] = Node(index=i, members=groups[i], layer=at, x=MARGIN + at * (NODE_W + GAP_X),
                            y=top + position * (NODE_H + GAP_Y))
    width = MARGIN * 2 + len(columns) * NODE_W + max(len(columns) - 1, 0) * GAP_X
    placed = tuple(node for node in nodes if node is not None)
    return Layout(nodes=placed, edges=tuple((p, i) for i, before in enumerate(preds) for p in before),
                  width=width, height=height,
                  node_of={name: node.index for node in placed for name in node.members})
