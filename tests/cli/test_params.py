"""Run parameters through the command line: declared in the file, given with --param, rendered into a job's command,
args and env, checked before anything runs, recorded with the run and shown by `show`; retries run with the
values and scheduled time the run recorded; deploy --param sets the defaults, trigger --param overrides them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from tests.conftest import Cli, WritePipeline, store_url

RECORD = ("import json, os, sys; open(os.environ['OUT'], 'a').write(json.dumps("
          "{'job': os.environ['JOBGRAPH_TASK'], 'argv': sys.argv[1:], 'day': os.environ.get('DAY'), "
          "'params': os.environ.get('JOBGRAPH_PARAMS')}) + chr(10))")
"""A job's program: appends what it got (its args, $DAY, $JOBGRAPH_PARAMS) to the file $OUT, as a JSON line."""

PARAMS = [
    {"name": "day", "type": "date", "default": "2024-01-31", "description": "the day"},
    {"name": "limit", "type": "integer", "default": 10},
    {"name": "ratio", "type": "number", "default": 0.5},
    {"name": "full", "type": "boolean", "default": False},
    {"name": "regions", "type": "list", "default": ["eu", "us"]},
    {"name": "label", "type": "string"},
]


def recorder(name: str, out: Path, *args: str, **fields: Any) -> dict[str, Any]:
    """A `command:` job that records what it was given in `out`."""
    return {"name": name, "command": ["python", "-c", RECORD], "args": list(args),
            "env": {"OUT": str(out), **fields.pop("env", {})}, **fields}


def seen(out: Path) -> dict[str, dict[str, Any]]:
    """What each job recorded, by job (the last line of each)."""
    return {line["job"]: line for line in map(json.loads, out.read_text().splitlines())}


def last_run_id(cli: Cli, *store: str) -> str:
    runs = json.loads(cli("history", "--format", "json", *store, check=0).stdout)["runs"]
    return str(runs[0]["run_id"])


def test_params_are_rendered_recorded_and_shown(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline,
                                                any_store_url: str) -> None:
    out = tmp_path / "seen.jsonl"
    write_pipeline({"name": "params", "params": PARAMS, "jobs": [
        recorder("extract", out, "--day={{ params.day }}", "{{ params.limit }}", "{{ params.ratio }}",
                 "{{ params.full }}", "{{ params.regions }}", "{{ params.regions.1 }}", "{{ params.label }}",
                 "{{ pipeline }}/{{ job }}/{{ attempt }}", "{{ '{{' }} literal", env={"DAY": "{{ params.day }}"}),
        {**recorder("plain", out, "no placeholders"), "after": ["extract"]},
    ]})
    store = ("--store", any_store_url)
    cli("run", "pipeline.yaml", *store, "--param", "limit=7", "-p", "full=yes", "--param", "regions=a, b,c",
        "--param", "label=x=y $(touch pwned) ; 'q'", check=0)
    run_id = last_run_id(cli, *store)
    got = seen(out)
    assert got["extract"]["argv"] == ["--day=2024-01-31", "7", "0.5", "true", '["a","b","c"]', "b",
                                      "x=y $(touch pwned) ; 'q'", "params/extract/1", "{{ literal"]
    assert got["extract"]["day"] == "2024-01-31"
    assert not (tmp_path / "pwned").exists()  # a value is one argument, never a shell's text
    assert got["plain"]["argv"] == ["no placeholders"]
    expected = {"day": "2024-01-31", "limit": 7, "ratio": 0.5, "full": True, "regions": ["a", "b", "c"],
                "label": "x=y $(touch pwned) ; 'q'"}
    assert json.loads(got["plain"]["params"]) == expected  # every job gets them all in $JOBGRAPH_PARAMS

    with Store(any_store_url) as records:
        assert json.loads(records.run(run_id).params or "") == expected
    detail = json.loads(cli("show", run_id, "--format", "json", *store, check=0).stdout)
    assert detail["run"]["params"] == expected
    shown = cli("show", run_id, *store, check=0).stdout
    assert "params: day=2024-01-31, limit=7, ratio=0.5, full=true, regions=[\"a\", \"b\", \"c\"], label=x=y" in shown


def test_a_pipeline_without_params_records_none_and_shows_an_empty_object(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "plain", "jobs": [{"name": "a", "command": ["true"]}]})
    cli("run", "pipeline.yaml", check=0)
    run_id = last_run_id(cli)
    with Store(store_url(tmp_path)) as records:
        assert records.run(run_id).params is None
    assert json.loads(cli("show", run_id, "-f", "json", check=0).stdout)["run"]["params"] == {}
    assert "params:" not in cli("show", run_id, check=0).stdout


def test_bad_params_exit_2_naming_file_and_field_and_nothing_is_recorded(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    out = tmp_path / "seen.jsonl"
    write_pipeline({"name": "params", "params": PARAMS, "jobs": [recorder("a", out, "{{ params.label }}")]})
    cases = {
        ("--param", "label=x", "--param", "limt=3"): "field '--param limt': unknown parameter 'limt' (did you mean "
                                                      "'limit'?)",
        ("--param", "label=x", "--param", "limit=3.5"): "field '--param limit': parameter 'limit' is of type integer: "
                                                         "'3.5' is not an integer",
        ("--param", "label=x", "--param", "day=2024-02-30"): "'2024-02-30' is not a date such as 2024-01-31",
        ("--param", "label=x", "--param", "full=maybe"): "'maybe' is not true or false",
        ("--param", "label=x", "--param", "ratio=nan"): "'nan' is not a finite number",
        ("--param", "label=x", "--param", "regions=[1,"): "is not a JSON list",
        (): "field '--param label': parameter 'label' (string) has no default: give it with --param label=VALUE",
        ("--param", "label"): "'label' is not NAME=VALUE",
        ("--param", "label=a", "--param", "label=b"): "parameter 'label' is given twice",
    }
    for args, message in cases.items():
        result = cli("run", "pipeline.yaml", *args, check=2)
        assert message in result.stderr, (args, result.stderr)
        assert "nothing was run" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    assert not (tmp_path / ".jobgraph" / "jobgraph.db").exists()  # checked before the store is even opened


def test_placeholders_are_checked_at_validate_naming_job_and_field(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "params", "params": [{"name": "day", "type": "date", "default": "2024-01-31"},
                                                 {"name": "API_TOKEN"}], "jobs": [
        {"name": "a", "command": ["echo", "{{ params.dya }}"], "args": ["{{ schedule_time }}"],
         "env": {"X": "{{ 1 + 1 }}", "Y": "{{ params.day.year }}", "Z": "{{ unclosed"}},
        {"name": "b", "command": ["echo"], "secrets": ["API_TOKEN"]},
    ]})
    result = cli("validate", "pipeline.yaml", check=2)
    errors = result.stderr
    assert ("pipeline.yaml, job 'a', field 'command.1': parameter 'dya' is not declared (did you mean 'day'?)"
            in errors)
    assert "job 'a', field 'args.0': '{{ schedule_time }}' names nothing a run provides (did you mean " \
           "'scheduled_time'?)" in errors
    assert "job 'a', field 'env.X': '{{ 1 + 1 }}' is not a name like params.date or item" in errors
    assert "job 'a', field 'env.Y': 'params.day.year': parameter 'day' is a date, it has no parts" in errors
    assert "job 'a', field 'env.Z': '{{' without a closing '}}'" in errors
    assert "field 'params.API_TOKEN': parameter 'API_TOKEN' has the name of a secret" in errors
    for bad, message in ((
            [{"name": "n", "type": "integer", "default": "many"}],
            "field 'params.n': the default of parameter 'n' is not of type integer: 'many' is not an integer"), (
            [{"name": "n", "type": "decimal"}], "field 'params.n.type': Input should be 'string', 'integer', "
                                                "'number', 'boolean', 'date' or 'list'"), (
            [{"name": "n"}, {"name": "N"}], "field 'params.N': duplicate parameter: 'n' is already declared")):
        write_pipeline({"name": "params", "params": bad, "jobs": [{"name": "a", "command": ["true"]}]})
        assert message in cli("validate", "pipeline.yaml", check=2).stderr


def test_a_secret_cannot_be_passed_as_a_param(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline,
                                              monkeypatch: Any) -> None:
    out = tmp_path / "seen.jsonl"
    monkeypatch.setenv("API_TOKEN", "s3cr3t-value-123")
    write_pipeline({"name": "params", "params": [{"name": "note", "default": "-"}],
                    "jobs": [{**recorder("a", out, "{{ params.note }}"), "secrets": ["API_TOKEN"]}]})
    result = cli("run", "pipeline.yaml", "--param", "note=token is s3cr3t-value-123", check=2)
    assert ("error: pipeline.yaml, field '--param note': the value of parameter 'note' holds the value of secret "
            "API_TOKEN") in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout
    assert not out.exists()
    with Store(store_url(tmp_path)) as records:
        assert records.runs(10) == []


def test_a_placeholder_with_no_value_at_run_time_fails_that_job_as_error_and_the_run_goes_on(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    out = tmp_path / "seen.jsonl"
    write_pipeline({"name": "params", "params": [{"name": "regions", "type": "list", "default": ["eu"]}],
                    "jobs": [recorder("third", out, "{{ params.regions.2 }}", retries=1), recorder("other", out)]})
    cli("run", "pipeline.yaml", check=1)
    run_id = last_run_id(cli)
    detail = json.loads(cli("show", run_id, "-f", "json", check=0).stdout)
    jobs = {job["name"]: job for job in detail["jobs"]}
    assert jobs["other"]["state"] == "SUCCEEDED" and jobs["third"]["state"] == "FAILED"
    third = [a for a in detail["attempts"] if a["job"] == "third"]
    assert [a["status"] for a in third] == ["ERROR", "ERROR"]  # retried like any runner error, then failed
    assert "cannot fill in the job's placeholders: 'params.regions.2' has no value here" in third[0]["error"]
    assert set(seen(out)) == {"other"}


def test_a_retry_runs_with_the_params_and_scheduled_time_the_run_recorded(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    out, flag = tmp_path / "seen.jsonl", tmp_path / "fail-once"
    flag.write_text("")
    fails_once = f"import os, sys; p = {str(flag)!r}; os.path.exists(p) and (os.remove(p), sys.exit(3))"
    write_pipeline({"name": "params", "params": [{"name": "day", "type": "date", "default": "2024-01-31"}], "jobs": [
        recorder("first", out, "{{ params.day }}", "{{ scheduled_time }}"),
        {"name": "flaky", "command": ["python", "-c", fails_once], "after": ["first"]},
        {**recorder("last", out, "{{ params.day }}", "{{ scheduled_time }}"), "after": ["flaky"]},
    ]})
    cli("run", "pipeline.yaml", "--param", "day=2030-12-24", check=1)
    run_id = last_run_id(cli)
    cli("retry", run_id, check=0)
    got = seen(out)
    assert got["last"]["argv"] == got["first"]["argv"]  # the same day, the same scheduled time
    assert got["last"]["argv"][0] == "2030-12-24"
    with Store(store_url(tmp_path)) as records:
        run = records.run(run_id)
        assert run.run_attempt == 2 and json.loads(run.params or "") == {"day": "2030-12-24"}
        assert run.scheduled_time is not None
        assert got["first"]["argv"][1] == run.scheduled_time.isoformat()


def test_deploy_params_are_the_defaults_of_triggered_runs_and_trigger_params_override_them(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    out = tmp_path / "seen.jsonl"
    write_pipeline({"name": "nightly", "params": [{"name": "day", "type": "date"},
                                                  {"name": "limit", "type": "integer", "default": 1}],
                    "jobs": [recorder("a", out, "{{ params.day }}", "{{ params.limit }}")]})
    assert "field '--param limit': parameter 'limit' is of type integer" in \
        cli("deploy", "pipeline.yaml", "--param", "limit=x", check=2).stderr
    cli("deploy", "pipeline.yaml", "--param", "day=2024-03-01", check=0)
    cli("trigger", "nightly", check=0)
    assert seen(out)["a"]["argv"] == ["2024-03-01", "1"]
    cli("trigger", "nightly", "--param", "limit=5", check=0)
    assert seen(out)["a"]["argv"] == ["2024-03-01", "5"]
    bad = cli("trigger", "nightly", "--param", "limt=5", check=2)
    assert "pipeline nightly, field '--param limt': unknown parameter 'limt' (did you mean 'limit'?)" in bad.stderr
    with Store(store_url(tmp_path)) as records:
        runs = records.runs(10, "nightly")
        assert len(runs) == 2
        assert sorted(json.loads(records.run(r.run_id).params or "")["limit"] for r in runs) == [1, 5]

    write_pipeline({"name": "hourly", "schedule": "60 MINUTE", "params": [{"name": "day", "type": "date"}],
                    "jobs": [{"name": "a", "command": ["echo", "{{ params.day }}"]}]})
    refused = cli("deploy", "pipeline.yaml", check=2)
    assert "field 'params.day': parameter 'day' has no default, and a scheduled run has nobody to give it" in \
        refused.stderr
    assert "nothing was deployed." in refused.stderr and "nothing was run" not in refused.stderr
    with Store(store_url(tmp_path)) as records:
        assert "hourly" not in {deployed.name for deployed in Deployments(records).all()}
    cli("deploy", "pipeline.yaml", "--param", "day=2024-03-02", check=0)


def test_a_trigger_through_the_service_carries_its_params(tmp_path: Path, cli: Cli,
                                                          write_pipeline: WritePipeline) -> None:
    out = tmp_path / "seen.jsonl"
    write_pipeline({"name": "svc", "params": [{"name": "day", "type": "date", "default": "2024-01-01"}],
                    "jobs": [recorder("a", out, "{{ params.day }}", "{{ scheduled_time }}")]})
    cli("deploy", "pipeline.yaml", check=0)
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    env.pop("JOBGRAPH_STORE", None)
    serve = subprocess.Popen([sys.executable, "-m", "jobgraph", "serve", "--tick", "0.1"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with Store(store_url(tmp_path)) as records:
            deadline = time.monotonic() + 60
            while Deployments(records).lease_holder("scheduler", datetime.now(UTC)) is None:
                assert time.monotonic() < deadline, "the service never took the lease"
                time.sleep(0.05)
            requested = cli("trigger", "svc", "--param", "day=2031-07-04", check=0).stdout
            assert "run requested from the scheduler service" in requested
            run_id = requested.split("run ")[-1].split()[0]
            while records.run(run_id).state == "RUNNING":
                assert time.monotonic() < deadline, "the run never ended"
                time.sleep(0.05)
            run = records.run(run_id)
            assert run.state == "SUCCEEDED" and json.loads(run.params or "") == {"day": "2031-07-04"}
            fires = Deployments(records).fires("svc")
            assert [f.action for f in fires] == ["TAKEN", "STARTED"]
            assert run.scheduled_time == fires[0].scheduled_time  # the request's time is the run's scheduled time
            assert seen(out)["a"]["argv"] == ["2031-07-04", fires[0].scheduled_time.isoformat()]
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=60)


def test_plan_fills_in_the_params(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    write_pipeline({"name": "p", "params": [{"name": "day", "type": "date", "default": "2024-01-31"},
                                            {"name": "label"}],
                    "jobs": [{"name": "a", "command": ["echo", "{{ params.day }}"], "args": ["{{ params.label }}"]}]})
    planned = json.loads(cli("plan", "pipeline.yaml", "-f", "json", check=0).stdout)
    assert planned["jobs"][0]["argv"][-2:] == ["2024-01-31", "<param label>"]
    planned = json.loads(cli("plan", "pipeline.yaml", "-f", "json", "--param", "label=x", check=0).stdout)
    assert planned["jobs"][0]["argv"][-2:] == ["2024-01-31", "x"]


def test_a_param_that_is_not_utf_8_text_exits_2_and_nothing_runs(
        tmp_path: Path, write_pipeline: WritePipeline) -> None:
    out = tmp_path / "seen.jsonl"
    write_pipeline({"name": "params", "params": PARAMS, "jobs": [recorder("a", out, "{{ params.label }}")]})
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
    env.pop("JOBGRAPH_STORE", None)
    cases: dict[tuple[bytes, ...], str] = {
        (b"label=a\xffb",): "argument 4 (label=a\\xffb) is not UTF-8 text",
        (b"label=x", b'regions=["eu", "\\ud800"]'): "field '--param regions': parameter 'regions' is of type list: "
                                                    "the value is not UTF-8 text",
    }
    for given, message in cases.items():
        argv = [os.fsencode(sys.executable), b"-m", b"jobgraph", b"run", b"pipeline.yaml"]
        for value in given:
            argv += [b"--param", value]
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, timeout=120)
        stderr = result.stderr.decode("utf-8", "replace")
        assert result.returncode == 2, stderr
        assert message in stderr and "nothing was run" in stderr and "Traceback" not in stderr
    assert not out.exists()
    assert not (tmp_path / ".jobgraph" / "jobgraph.db").exists()


def test_show_prints_a_param_holding_terminal_controls_escaped(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    out = tmp_path / "seen.jsonl"
    write_pipeline({"name": "params", "params": PARAMS, "jobs": [recorder("a", out, "{{ params.label }}")]})
    hostile = "\x1b]0;owned\x07\x1b[2Jgone\rx\x9b31m"
    cli("run", "pipeline.yaml", "--param", f"label={hostile}", check=0)
    assert json.loads(out.read_text())["argv"] == [hostile]  # the job got it exactly
    with Store(store_url(tmp_path)) as records:
        run_id = records.runs()[0].run_id
    shown = cli("show", run_id, check=0).stdout
    line = next(line for line in shown.splitlines() if line.startswith("params:"))
    assert not any(c in line for c in "\x1b\x07\r\x9b")
    assert 'label="\\u001b]0;owned\\u0007\\u001b[2Jgone\\rx\\u009b31m"' in line
    assert "day=2024-01-31" in line  # printable text as it is
