"""The DAG: levels, ranks for critical-path-first ordering, and recursive dependents."""

from jobgraph.graph import Dag

SEED_EDGES = [
    ("t_myjob_1", ()), ("t_myjob_2", ()), ("t_myjob_3", ("t_myjob_2",)), ("t_myjob_4", ("t_myjob_2",)),
    ("t_myjob_5", ("t_myjob_1",)), ("t_myjob_6", ("t_myjob_3", "t_myjob_4", "t_myjob_5")),
]


def test_levels_group_jobs_by_depth() -> None:
    dag = Dag.build(SEED_EDGES)
    assert dag.levels() == [["t_myjob_1", "t_myjob_2"], ["t_myjob_3", "t_myjob_4", "t_myjob_5"], ["t_myjob_6"]]


def test_rank_counts_the_longest_path_to_the_end() -> None:
    dag = Dag.build([("a", ()), ("b", ("a",)), ("c", ("b",)), ("lone", ())])
    assert dag.rank == {"a": 3, "b": 2, "c": 1, "lone": 1}


def test_descendants_answer_task_dependents_recursive() -> None:
    dag = Dag.build(SEED_EDGES)
    assert dag.descendants("t_myjob_2") == ["t_myjob_3", "t_myjob_4", "t_myjob_6"]
    assert dag.descendants("t_myjob_6") == []


def test_a_long_chain_builds_in_linear_time() -> None:
    edges = [("j0", ())] + [(f"j{i}", (f"j{i - 1}",)) for i in range(1, 20_000)]
    dag = Dag.build(edges)
    assert dag.rank["j0"] == 20_000 and len(dag.levels()) == 20_000


def test_ancestors_are_everything_a_job_runs_after() -> None:
    dag = Dag.build(SEED_EDGES)
    assert sorted(dag.ancestors("t_myjob_6")) == ["t_myjob_1", "t_myjob_2", "t_myjob_3", "t_myjob_4", "t_myjob_5"]
    assert dag.ancestors("t_myjob_3") == ["t_myjob_2"]
    assert dag.ancestors("t_myjob_1") == []
