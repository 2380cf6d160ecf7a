"""The run page's graph layout: small whatever the run's size, folded where a person would fold it, stable."""

from __future__ import annotations

import random

from jobgraph.web.layout import FOLD_AT, NODE_W, layout


def test_the_seeds_six_jobs_are_drawn_apart_in_three_layers_without_overlap() -> None:
    seed = [("t_myjob_1", ()), ("t_myjob_2", ()), ("t_myjob_3", ("t_myjob_2",)), ("t_myjob_4", ("t_myjob_2",)),
            ("t_myjob_5", ("t_myjob_1",)), ("t_myjob_6", ("t_myjob_3", "t_myjob_4", "t_myjob_5"))]
    drawn = layout(seed)
    assert sorted(node.members for node in drawn.nodes) == [(name,) for name, _ in seed]
    layer = {node.members[0]: node.layer for node in drawn.nodes}
    assert layer == {"t_myjob_1": 0, "t_myjob_2": 0, "t_myjob_3": 1, "t_myjob_4": 1, "t_myjob_5": 1, "t_myjob_6": 2}
    boxes = {(node.x, node.y) for node in drawn.nodes}
    assert len(boxes) == 6
    assert all(a.x + NODE_W <= b.x for p, s in drawn.edges for a, b in [(drawn.nodes[p], drawn.nodes[s])])
    assert len(drawn.edges) == 6


def test_a_fan_out_of_siblings_and_the_chains_hanging_off_it_fold() -> None:
    fan = [(f"a{i}", ("root",)) for i in range(300)] + [(f"b{i}", (f"a{i}",)) for i in range(300)]
    drawn = layout([("root", ()), *fan, ("sink", tuple(f"b{i}" for i in range(300)))])
    assert [len(node.members) for node in sorted(drawn.nodes, key=lambda n: n.layer)] == [1, 300, 300, 1]
    assert drawn.node_of["a7"] == drawn.node_of["a250"] != drawn.node_of["b7"]
    few = layout([("root", ()), *[(f"x{i}", ("root",)) for i in range(FOLD_AT - 1)]])
    assert len(few.nodes) == FOLD_AT  # fewer siblings than FOLD_AT stay apart


def test_long_chains_and_random_graphs_of_5000_jobs_stay_small() -> None:
    chain = layout([(f"c{i}", (f"c{i - 1}",) if i else ()) for i in range(5000)])
    assert len(chain.nodes) == 1 and len(chain.nodes[0].members) == 5000
    rng = random.Random(7)
    tangled = layout([(f"n{i}", tuple(f"n{rng.randrange(i)}" for _ in range(2)) if i else ()) for i in range(5000)])
    assert len(tangled.nodes) < 400 and sum(len(node.members) for node in tangled.nodes) == 5000
    assert all(node.x < tangled.width and node.y < tangled.height for node in tangled.nodes)


def test_the_layout_is_cached_by_the_graphs_structure() -> None:
    jobs = [("extract", ()), ("load", ("extract",))]
    assert layout(jobs) is layout(list(reversed(jobs)))
    assert layout(jobs) is not layout([("extract", ()), ("load", ())])
