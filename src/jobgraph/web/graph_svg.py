"""The run's graph as inline SVG, coloured by state: drawn on the server from the cached layout (web/layout.py).

Every name is escaped here (a job name is data, never markup). Each node carries its state as a class
(`s-FAILED`) and its job as `data-job`, so the page's script can recolour a node when the event stream
says a job changed, without drawing anything again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

from jobgraph.web.layout import NODE_H, NODE_W, Layout, Node

STATE_ORDER = ("RUNNING", "FAILED", "CANCELLED", "QUEUED", "PENDING", "SKIPPED", "SUCCEEDED")
"""Which state colours a folded node: the first of these that any of its jobs is in."""

_LABEL_CHARS = 22


def graph_svg(drawn: Layout, states: Mapping[str, str], fanned: Mapping[str, Sequence[str]] | None = None) -> Markup:
    """The whole graph: edges first (under the boxes), then one group per node; a fanned-out job's copies
    (`fanned`: job -> its copies) are folded into its node."""
    parts = [f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{drawn.width}" height="{drawn.height}" '
             f'viewBox="0 0 {drawn.width} {drawn.height}" role="img" aria-label="the run\'s graph">']
    for p, s in drawn.edges:
        a, b = drawn.nodes[p], drawn.nodes[s]
        x1, y1, x2, y2 = a.x + NODE_W, a.y + NODE_H // 2, b.x, b.y + NODE_H // 2
        bend = (x2 - x1) // 2
        parts.append(f'<path class="edge" d="M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"/>')
    for node in drawn.nodes:
        copies = fanned.get(node.members[0]) if fanned and not node.folded else None
        parts.append(fan_out_svg(node, states, copies) if copies else node_svg(node, states))
    parts.append("</svg>")
    return Markup("".join(parts))


def node_svg(node: Node, states: Mapping[str, str]) -> str:
    """One node: a job's box named and coloured by its state, or a folded group with its jobs counted by state."""
    if not node.folded:
        name = node.members[0]
        state = states.get(name, "PENDING")
        return (f'<g class="node s-{escape(state)}" data-job="{escape(name)}" data-node="{node.index}" '
                f'transform="translate({node.x},{node.y})" tabindex="0"><title>{escape(name)}: {escape(state)}</title>'
                f'<rect width="{NODE_W}" height="{NODE_H}" rx="6"/>'
                f'<text x="10" y="25">{escape(_short(name))}</text></g>')
    counts = Counter(states.get(name, "PENDING") for name in node.members)
    state = next((s for s in STATE_ORDER if counts.get(s)), "PENDING")
    summary = ", ".join(f"{counts[s]} {s.lower()}" for s in STATE_ORDER if counts.get(s))
    first, last = node.members[0], node.members[-1]
    return (f'<g class="node folded s-{state}" data-node="{node.index}" data-first="{escape(first)}" '
            f'transform="translate({node.x},{node.y})" tabindex="0">'
            f'<title>{len(node.members)} jobs ({escape(first)} … {escape(last)}): {summary}</title>'
            f'<rect width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="10" y="16">{len(node.members)} jobs</text>'
            f'<text class="sub" x="10" y="29">{escape(_short(summary, 26))}</text>'
            f'{_bar(counts, len(node.members))}</g>')


def fan_out_svg(node: Node, states: Mapping[str, str], copies: Sequence[str]) -> str:
    """A fanned-out job: its box, coloured by its own state, with its copies counted by state and a bar of them."""
    name = node.members[0]
    state = states.get(name, "PENDING")
    counts = Counter(states.get(copy, "PENDING") for copy in copies)
    summary = ", ".join(f"{counts[s]} {s.lower()}" for s in STATE_ORDER if counts.get(s))
    label = f"{_short(name, _LABEL_CHARS - 7)} [{len(copies)}]"
    return (f'<g class="node fanned s-{escape(state)}" data-job="{escape(name)}" data-node="{node.index}" '
            f'transform="translate({node.x},{node.y})" tabindex="0">'
            f'<title>{escape(name)}: {escape(state)}, {len(copies)} copies ({summary})</title>'
            f'<rect width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="10" y="16">{escape(label)}</text>'
            f'<text class="sub" x="10" y="29">{escape(_short(summary, 26))}</text>{_bar(counts, len(copies))}</g>')


def _bar(counts: Counter[str], total: int) -> str:
    """A strip along a node's bottom edge, one piece per state, as wide as its share of `total`."""
    bar, x = [], 0.0
    for s in STATE_ORDER:
        if counts.get(s):
            width = NODE_W * counts[s] / total
            bar.append(f'<rect class="bar s-{s}" x="{x:.1f}" y="{NODE_H - 6}" width="{width:.1f}" height="6"/>')
            x += width
    return "".join(bar)


def _short(name: str, chars: int = _LABEL_CHARS) -> str:
    """A name cut to fit its box (the full name is in the node's title)."""
    return name if len(name) <= chars else name[: chars - 1] + "…"
