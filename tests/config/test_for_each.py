"""The for_each field as the config layer reads it: its three forms, one stored form, and clear refusals."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from jobgraph.config import Pipeline, check_pipeline
from jobgraph.config.for_each import ForEachSource, source_of
from jobgraph.errors import ConfigError


def pipeline(**job: Any) -> Pipeline:
    document = {"name": "p", "images": {"sh": ["sh", "-c"]},
                "jobs": [{"name": "extract", "image": "sh"}, {"name": "load", "image": "sh", **job}]}
    return check_pipeline(Pipeline.model_validate(document), "p.yaml")


def test_from_a_job_is_stored_as_its_return_value_placeholder_and_survives_the_snapshot() -> None:
    loaded = pipeline(after=["EXTRACT"], for_each={"from": "EXTRACT"})
    assert loaded.jobs[1].for_each == "{{ EXTRACT.return_value }}"
    again = Pipeline.model_validate_json(loaded.model_dump_json())
    assert again.jobs[1].for_each == "{{ EXTRACT.return_value }}"
    assert source_of(again.jobs[1].for_each) == ForEachSource(predecessor="EXTRACT")
    assert source_of("{{ params.days }}") == ForEachSource(param="days")
    assert source_of(("a", {"b": 1})) == ForEachSource(literal=("a", {"b": 1}))


@pytest.mark.parametrize(("value", "message"), [
    (3, "expected a list, '{{ params.NAME }}', '{{ JOB.return_value }}' or {from: JOB}, got int"),
    ({"from": "extract", "x": 1}, "expected a list"),
    ([datetime.date(2026, 1, 1)], "item 0 holds a date, which is not a JSON value (quote it: a string)"),
    ([{"k": float("nan")}], "item 0 holds a NaN"),
])
def test_a_value_of_the_wrong_shape_is_refused_by_the_model(value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        pipeline(for_each=value)
    assert message in str(raised.value)


@pytest.mark.parametrize(("job", "message"), [
    ({"for_each": "{{ extract }}"}, "names neither a parameter"),
    ({"for_each": "{{ a b }}"}, "is not a name like params.date"),
    ({"for_each": "{{ params.x }} and more"}, "is not a list, '{{ params.NAME }}' or '{{ JOB.return_value }}'"),
    ({"for_each": "{{ extract.return_value }}"}, "'extract' is not one of this job's predecessors"),
    ({"name": "x" * 250, "for_each": [1]}, "a job that fans out has a name of at most 249 characters"),
    ({"for_each": [1] * 1001}, "the list has 1001 items, more than max_fan_out 1000 (at most 10000)"),
    ({"env": {"X": "{{ item.a }}"}}, "'{{ item }}' is only set in a job with for_each"),
])
def test_a_for_each_that_cannot_work_is_refused_naming_the_job_and_field(job: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        pipeline(**job)
    problems = [p for p in raised.value.problems if message in p.message]
    assert problems, raised.value
    assert problems[0].job == job.get("name", "load") and problems[0].field in ("for_each", "env")


def test_the_json_schema_takes_each_form() -> None:
    schema = Pipeline.model_json_schema()["$defs"]["Job"]["properties"]["for_each"]
    kinds = [branch.get("type") for branch in schema["anyOf"]]
    assert kinds == ["array", "string", "object", "null"]
    assert schema["anyOf"][2]["required"] == ["from"]
