"""A job with for_each, run for real: one copy per item, the pool capping them, dependents waiting for every copy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from jobgraph.engine import AttemptEnded, Event, JobsExpanded, TaskChanged
from jobgraph.engine.run import GraphRun, PriorTask
from jobgraph.runners.local import LocalRunner
from jobgraph.states import AttemptStatus, RunState, TaskState
from tests.conftest import sh
from tests.engine.test_run import closing, execute, make


def final(events: list[Event], task: str) -> TaskChanged:
    """The last change of a job (its end)."""
    return [e for e in events if isinstance(e, TaskChanged) and e.task == task][-1]


def returns(value: str) -> str:
    """A script that writes `value` as its return value."""
    return f"printf '%s' '{value}' > \"$JOBGRAPH_RETURN_VALUE_FILE\""


def test_each_item_runs_as_a_copy_with_its_item_in_args_and_env(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pipeline = make([sh("each", f'echo "$JOBGRAPH_TASK $ITEM $JOBGRAPH_ITEM {{{{ item }}}}" >> {out}',
                        env={"ITEM": "{{ item }}"}, for_each=["a b", 7, {"k": [1]}])])
    result, events = execute(pipeline, tmp_path)
    assert result.state == RunState.SUCCEEDED
    assert sorted(out.read_text().splitlines()) == [
        "each[0] a b a b a b", "each[1] 7 7 7", 'each[2] {"k":[1]} {"k":[1]} {k:[1]}']  # the shell ate the quotes
    expanded = [e for e in events if isinstance(e, JobsExpanded)]
    assert [[c.name for c in e.copies] for e in expanded] == [["each[0]", "each[1]", "each[2]"]]
    assert expanded[0].items == ('"a b"', "7", '{"k":[1]}')
    assert final(events, "each").state == TaskState.SUCCEEDED
    for i in range(3):  # each copy its own log
        assert (tmp_path / "logs" / result.run_id / f"each[{i}]" / "attempt-1.log").is_file()


def test_the_pool_caps_the_copies_and_dependents_wait_for_every_copy(tmp_path: Path) -> None:
    log = tmp_path / "spans"
    script = f"echo start $(date +%s%N) >> {log}; sleep 0.2; echo end $(date +%s%N) >> {log}"
    pipeline = make([sh("each", script, for_each=list(range(6)), pool="two"),
                     sh("after_all", f"echo last $(date +%s%N) >> {log}", after=["each"])],
                    pools={"two": {"max_parallel": 2}})
    result, _ = execute(pipeline, tmp_path)
    assert result.state == RunState.SUCCEEDED
    marks = sorted((int(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines()))
    running, peak = 0, 0
    for _, kind in marks:
        running += {"start": 1, "end": -1, "last": 0}[kind]
        peak = max(peak, running)
    assert peak == 2
    assert [kind for _, kind in marks].count("start") == 6
    assert marks[-1][1] == "last"  # after every copy's end


def test_a_predecessors_json_list_is_fanned_out_and_the_copies_values_are_the_jobs(tmp_path: Path) -> None:
    pipeline = make([sh("list", returns('["x", "y"]')),
                     sh("each", 'printf "got-%s" "{{ item }}" > "$JOBGRAPH_RETURN_VALUE_FILE"', after=["list"],
                        for_each={"from": "list"}),
                     sh("sum", 'echo "$JOBGRAPH_PREDECESSOR_VALUES" > out', after=["each"])])
    result, events = execute(pipeline, tmp_path)
    assert result.state == RunState.SUCCEEDED
    assert json.loads(final(events, "each").return_value or "") == ["got-x", "got-y"]
    assert final(events, "each[1]").return_value == "got-y"


def test_a_value_that_is_not_a_list_fails_the_job_and_the_run_goes_on(tmp_path: Path) -> None:
    cases = {"obj": '{"a": 1}', "text": "not json", "none": None, "wide": "[1, 2, 3]"}
    jobs: list[dict[str, Any]] = []
    for name, value in cases.items():
        jobs.append(sh(f"{name}_src", returns(value) if value is not None else "true"))
        jobs.append(sh(name, "echo {{ item }}", after=[f"{name}_src"], for_each=f"{{{{ {name}_src.return_value }}}}",
                       **({"max_fan_out": 2} if name == "wide" else {})))
        jobs.append(sh(f"{name}_next", "true", after=[name]))
    jobs.append(sh("other", "true"))
    result, events = execute(make(jobs), tmp_path)
    assert result.state == RunState.FAILED
    reasons = {name: final(events, name).reason or "" for name in cases}
    assert all(final(events, name).state == TaskState.FAILED for name in cases)
    assert "obj_src is a JSON object, not a list" in reasons["obj"]
    assert "the return value of text_src is not JSON" in reasons["text"] and "'not json'" in reasons["text"]
    assert "none_src returned no value" in reasons["none"]
    assert "for_each has 3 items, more than max_fan_out 2" in reasons["wide"]
    for name in cases:
        assert final(events, f"{name}_next").state == TaskState.SKIPPED
        assert not [e for e in events if isinstance(e, JobsExpanded) and e.job == name]
    assert final(events, "other").state == TaskState.SUCCEEDED


def test_an_empty_list_succeeds_with_no_copies_and_says_so(tmp_path: Path) -> None:
    pipeline = make([sh("each", "exit 1", for_each=[]), sh("next", "true", after=["each"])])
    result, events = execute(pipeline, tmp_path)
    assert result.state == RunState.SUCCEEDED
    assert final(events, "each").reason == "for_each gave an empty list: no copies ran"
    assert not [e for e in events if isinstance(e, AttemptEnded)][:-1]  # only `next` ran
    assert final(events, "next").state == TaskState.SUCCEEDED


def test_a_failed_copy_is_retried_alone_and_fails_the_job_so_dependents_follow_their_rule(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    script = f'echo x >> {counter}.{{{{ item }}}}; [ "{{{{ item }}}}" != bad ]'
    pipeline = make([sh("each", script, for_each=["ok", "bad", "fine"], retries=2),
                     sh("strict", "true", after=["each"]),
                     sh("anyway", "true", after=["each"], trigger_rule="all_done")])
    result, events = execute(pipeline, tmp_path)
    assert result.state == RunState.FAILED
    assert len(Path(f"{counter}.bad").read_text().split()) == 3
    assert len(Path(f"{counter}.ok").read_text().split()) == 1
    assert final(events, "each[1]").state == TaskState.FAILED and final(events, "each[1]").attempt == 3
    assert final(events, "each").reason == "1 of 3 copies did not succeed: each[1] FAILED"
    assert final(events, "strict").state == TaskState.SKIPPED
    assert final(events, "anyway").state == TaskState.SUCCEEDED


def test_an_item_without_the_named_field_errors_that_attempt(tmp_path: Path) -> None:
    pipeline = make([sh("each", "echo {{ item.path }}", for_each=[{"path": "/a"}, {"other": 1}])])
    result, events = execute(pipeline, tmp_path)
    assert result.state == RunState.FAILED
    ended = {e.task: e for e in events if isinstance(e, AttemptEnded)}
    assert ended["each[0]"].status == AttemptStatus.DONE
    assert ended["each[1]"].status == AttemptStatus.ERROR
    assert "'item.path' has no value here" in (ended["each[1]"].error or "")


def test_a_retry_reruns_only_the_copies_that_did_not_succeed_for_the_same_item(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    pipeline = make([sh("each", f"echo {{{{ item }}}} >> {ran}", for_each=["a", "b", "c"])])
    prior = {"each": PriorTask(TaskState.FAILED, 0),
             "each[0]": PriorTask(TaskState.SUCCEEDED, 1, "v0", '"a"'),
             "each[1]": PriorTask(TaskState.FAILED, 2, None, '"b"'),
             "each[2]": PriorTask(TaskState.SUCCEEDED, 1, None, '"was c"')}  # another item: runs again
    result, events = execute(pipeline, tmp_path, prior=prior, run_attempt=2)
    assert result.state == RunState.SUCCEEDED
    assert sorted(ran.read_text().split()) == ["b", "c"]
    expanded = next(e for e in events if isinstance(e, JobsExpanded))
    assert [c.name for c in expanded.copies] == ["each[1]", "each[2]"]
    assert expanded.attempts == (2, 1) and expanded.run_attempt == 2
    assert final(events, "each[1]").attempt == 3  # attempt numbers go on
    assert json.loads(final(events, "each").return_value or "") == ["v0", None, None]


def test_cancel_while_copies_wait_for_the_pool_cancels_every_copy_and_leaves_no_process(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pipeline = make([sh("each", f"echo $$ >> {pids}; sleep 30", for_each=list(range(5)), pool="one")],
                    pools={"one": {"max_parallel": 1}})
    events: list[Event] = []
    runner = LocalRunner(pipeline.images, cwd=tmp_path, kill_grace=1.0)
    graph_run = GraphRun(pipeline, lambda _job: runner, [events.append], tmp_path / "logs")

    def cancel_once_running(event: Event) -> None:
        if isinstance(event, TaskChanged) and event.state == TaskState.RUNNING and event.task == "each[0]":
            asyncio.get_running_loop().call_later(0.3, graph_run.cancel)

    graph_run._delivery._others.append(cancel_once_running)
    result = closing(runner, graph_run.run())
    assert result.state == RunState.CANCELLED
    assert {final(events, f"each[{i}]").state for i in range(5)} == {TaskState.CANCELLED}
    assert final(events, "each").state == TaskState.CANCELLED
    for pid in pids.read_text().split():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            continue
        os.kill(int(pid), signal.SIGKILL)
        raise AssertionError(f"process {pid} of a cancelled copy is still alive")


def test_a_retry_whose_list_got_shorter_records_the_copies_past_its_end_as_skipped(tmp_path: Path) -> None:
    pipeline = make([sh("list", returns('["a"]')), sh("each", "true", after=["list"], for_each={"from": "list"})])
    prior = {"list": PriorTask(TaskState.FAILED, 1), "each": PriorTask(TaskState.SKIPPED, 0),
             "each[0]": PriorTask(TaskState.SUCCEEDED, 1, None, '"x"'),
             "each[1]": PriorTask(TaskState.FAILED, 1, None, '"y"'),
             "each[2]": PriorTask(TaskState.SKIPPED, 0, None, '"z"')}  # already dropped once: left as it is
    result, events = execute(pipeline, tmp_path, prior=prior, run_attempt=2)
    assert result.state == RunState.SUCCEEDED and "each[1]" not in result.tasks
    expanded = next(e for e in events if isinstance(e, JobsExpanded))
    assert [c.name for c in expanded.copies] == ["each[0]", "each[1]"] and expanded.items == ('"a"', '"y"')
    assert final(events, "each[0]").state == TaskState.SUCCEEDED  # another item: ran again
    assert final(events, "each[1]").state == TaskState.SKIPPED
    assert final(events, "each[1]").reason == "not in the list of each any more (its length is 1 now)"
    assert not [e for e in events if isinstance(e, TaskChanged) and e.task == "each[2]"]


def test_a_job_rerun_although_it_succeeded_reruns_every_copy(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    pipeline = make([sh("each", f"echo {{{{ item }}}} >> {ran}", for_each=["a", "b"])])
    prior = {"each[0]": PriorTask(TaskState.SUCCEEDED, 1, None, '"a"'),  # `each` itself left out: cleared
             "each[1]": PriorTask(TaskState.SUCCEEDED, 1, None, '"b"')}
    result, events = execute(pipeline, tmp_path, prior=prior, run_attempt=2)
    assert result.state == RunState.SUCCEEDED
    assert sorted(ran.read_text().split()) == ["a", "b"]
    assert final(events, "each[0]").attempt == 2
