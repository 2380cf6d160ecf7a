"""Which jobs a partial run and a targeted retry pick, on the seed's graph: --only, --from, --until and their
intersection, names checked with a did-you-mean, and edges to jobs left out dropped."""

from __future__ import annotations

import pytest

from jobgraph.config import Pipeline
from jobgraph.errors import ConfigError
from jobgraph.selection import choose, names, rerun, restricted, selected_jobs, summary, with_retry

SEED = Pipeline.model_validate({
    "name": "seed", "images": {"sh": ["sh", "-c"]},
    "jobs": [{"name": "t_myjob_1", "image": "sh"}, {"name": "t_myjob_2", "image": "sh"},
             {"name": "t_myjob_3", "image": "sh", "after": ["t_myjob_2"]},
             {"name": "t_myjob_4", "image": "sh", "after": ["t_myjob_2"]},
             {"name": "t_myjob_5", "image": "sh", "after": ["t_myjob_1"]},
             {"name": "t_myjob_6", "image": "sh", "after": ["t_myjob_3", "t_myjob_4", "t_myjob_5"]}],
    "finalizer": {"name": "stats", "image": "sh"},
})


def jobs_of(**asked: tuple[str, ...]) -> list[str]:
    chosen = choose(SEED, "seed.yaml", **asked)
    assert chosen is not None
    return list(chosen["jobs"])


def test_nothing_asked_is_the_whole_pipeline() -> None:
    assert choose(SEED, "seed.yaml") is None
    assert selected_jobs(None) is None and selected_jobs({"retries": []}) is None
    assert [job.name for job in restricted(SEED, None)] == [job.name for job in SEED.jobs]


def test_from_is_the_job_and_everything_downstream_until_everything_upstream() -> None:
    assert jobs_of(start=("t_myjob_2",)) == ["t_myjob_2", "t_myjob_3", "t_myjob_4", "t_myjob_6"]
    assert jobs_of(until=("t_myjob_5",)) == ["t_myjob_1", "t_myjob_5"]
    assert jobs_of(until=("t_myjob_6",)) == [job.name for job in SEED.jobs]  # in file order


def test_options_together_pick_what_all_of_them_pick() -> None:
    assert jobs_of(start=("t_myjob_2",), until=("t_myjob_6",)) == ["t_myjob_2", "t_myjob_3", "t_myjob_4",
                                                                   "t_myjob_6"]
    assert jobs_of(start=("t_myjob_1",), until=("t_myjob_6",)) == ["t_myjob_1", "t_myjob_5", "t_myjob_6"]
    assert jobs_of(only=("t_myjob_3", "t_myjob_5"), start=("t_myjob_2",)) == ["t_myjob_3"]
    assert jobs_of(start=("t_myjob_1", "t_myjob_2")) == ["t_myjob_1", "t_myjob_2", "t_myjob_3", "t_myjob_4",
                                                          "t_myjob_5", "t_myjob_6"]


def test_the_record_keeps_what_was_asked() -> None:
    assert choose(SEED, "seed.yaml", only=("T_MYJOB_3",), until=("t_myjob_6",)) == {
        "only": ["T_MYJOB_3"], "from": [], "until": ["t_myjob_6"], "jobs": ["t_myjob_3"]}


def test_every_unknown_name_is_named_with_a_did_you_mean() -> None:
    with pytest.raises(ConfigError) as caught:
        choose(SEED, "seed.yaml", only=("t_myjob_3", "t_myjob_33"), start=("nothing_like_it",), until=("stats",))
    text = str(caught.value)
    assert "seed.yaml, field '--only': no job named 't_myjob_33' in pipeline seed (did you mean 't_myjob_3'?)" in text
    assert "seed.yaml, field '--from': no job named 'nothing_like_it' in pipeline seed\n" in text + "\n"
    assert "seed.yaml, field '--until': 'stats' is the finalizer: it always runs and is not chosen" in text


def test_a_choice_that_picks_nothing_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--from t_myjob_3 --until t_myjob_5 picks no job of pipeline seed"):
        choose(SEED, "seed.yaml", start=("t_myjob_3",), until=("t_myjob_5",))


def test_a_huge_name_is_cut_in_the_message() -> None:
    with pytest.raises(ConfigError) as caught:
        choose(SEED, "seed.yaml", only=("x" * 100_000,))
    assert len(str(caught.value)) < 300


def test_a_selected_job_does_not_wait_for_a_predecessor_left_out() -> None:
    kept = {job.name: job.after for job in restricted(SEED, frozenset({"t_myjob_3", "t_myjob_5", "t_myjob_6"}))}
    assert kept == {"t_myjob_3": (), "t_myjob_5": (), "t_myjob_6": ("t_myjob_3", "t_myjob_5")}
    assert SEED.jobs[5].after == ("t_myjob_3", "t_myjob_4", "t_myjob_5")  # the pipeline itself is unchanged


def test_names_split_commas_and_repeats() -> None:
    assert names(["a,b", " c ", "a", ",,"]) == ("a", "b", "c")
    assert names([]) == ()
    with pytest.raises(ConfigError, match="field '--job': names no job"):
        names(["", " ,"], "--job")  # given, but blank: never "every job"


def test_a_retry_reruns_the_jobs_named_and_with_downstream_their_dependents_in_the_run() -> None:
    assert rerun(SEED, None, ["t_myjob_4"], False, "r1") == (["t_myjob_4"], ["t_myjob_4"])
    assert rerun(SEED, None, ["T_MYJOB_2"], True, "r1") == (["t_myjob_2"], ["t_myjob_2", "t_myjob_3", "t_myjob_4",
                                                                          "t_myjob_6"])
    partial = choose(SEED, "seed.yaml", only=("t_myjob_2", "t_myjob_3"))
    assert rerun(SEED, partial, ["t_myjob_2"], True, "r1") == (["t_myjob_2"], ["t_myjob_2", "t_myjob_3"])
    with pytest.raises(ConfigError) as caught:
        rerun(SEED, partial, ["t_myjob_4", "t_myjob_9"], False, "r1")
    assert "run r1, field '--job': job 't_myjob_4' is not part of run r1: it ran only t_myjob_2, t_myjob_3" in str(
        caught.value)
    assert "no job named 't_myjob_9' in pipeline seed (did you mean 't_myjob_" in str(caught.value)


def test_each_targeted_retry_is_kept_in_the_selection() -> None:
    once = with_retry(None, 2, ["b"], True, ["b", "c"])
    twice = with_retry({**once, "jobs": ["a", "b", "c"]}, 3, ["a"], False, ["a"])
    assert twice["retries"] == [{"run_attempt": 2, "jobs": ["b"], "downstream": True, "rerun": ["b", "c"]},
                                {"run_attempt": 3, "jobs": ["a"], "downstream": False, "rerun": ["a"]}]
    assert summary(twice) == "attempt 2 reran b and downstream (2 jobs); attempt 3 reran a (1 job)"


def test_thousands_of_unknown_names_are_answered_at_once_in_a_bounded_message() -> None:
    wide = Pipeline.model_validate({"name": "wide", "images": {"sh": ["sh", "-c"]},
                                    "jobs": [{"name": f"job_{i}", "image": "sh"} for i in range(5_000)]})
    asked = [f"job_{i}" for i in range(5_000)] + [f"nope_{i}" for i in range(10_000)]
    with pytest.raises(ConfigError) as caught:
        choose(wide, "wide.yaml", only=asked)
    problems = caught.value.problems
    assert len(problems) == 21 and problems[-1].message == "and 9980 more names that are no job of pipeline wide"
    chosen = choose(wide, "wide.yaml", only=[f"job_{i}" for i in range(0, 5_000, 2)], start=["job_0"])
    assert chosen is not None and chosen["jobs"] == ["job_0"]
