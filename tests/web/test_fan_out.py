"""A fanned-out job on the run page: one node for the job and its copies, counted by state; each copy listed."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

from jobgraph.store import Store
from tests.conftest import Cli, WritePipeline, sh, store_url
from tests.web.conftest import served


def test_the_copies_are_folded_into_their_jobs_node_and_listed_after_it(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    write_pipeline({"jobs": [
        sh("extract", "printf '[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]' > \"$JOBGRAPH_RETURN_VALUE_FILE\""),
        sh("load", "[ {{ item }} != 10 ]", after=["extract"], for_each={"from": "extract"}),
        sh("report", "true", after=["load"], trigger_rule="all_done")]})
    cli("run", "pipeline.yaml", check=1)
    url = store_url(tmp_path)
    with Store(url) as records:
        run_id = records.runs()[0].run_id
    with served(url) as app, TestClient(app, base_url="http://127.0.0.1") as client:  # its own thread's loop:
        page = client.get(f"/runs/{run_id}").text  # the browser tests' session leaves one running in this one
    nodes = re.findall(r'<g class="node([^"]*)" data-job="([^"]+)"', page)
    assert [job for _, job in nodes] == ["extract", "load", "report"]
    fanned = re.search(r'<g class="node fanned s-FAILED" data-job="load".*?</g>', page)
    assert fanned is not None
    assert "load [11]" in fanned.group(0) and "1 failed, 10 succeeded" in fanned.group(0)
    assert len(re.findall(r'class="edge"', page)) == 2
    assert re.search(r'<td class="name">load\[2\] <span class="item" title="its item">3</span></td>', page)
    listed = re.findall(r'<tbody class="job[^"]*" data-job="([^"]+)"', page)
    assert listed == ["extract", "load", *(f"load[{i}]" for i in range(11)), "report"]


def test_a_hostile_item_is_shown_as_text(cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    hostile = "<img src=x onerror=window.__pwned=1>"
    write_pipeline({"jobs": [sh("each", "true # {{ item }}", for_each=[hostile, {"k": hostile}])]})
    cli("run", "pipeline.yaml", check=0)
    url = store_url(tmp_path)
    with Store(url) as records:
        run_id = records.runs()[0].run_id
    with served(url) as app, TestClient(app, base_url="http://127.0.0.1") as client:
        page = client.get(f"/runs/{run_id}").text
    assert "<img" not in page and "&lt;img src=x onerror=window.__pwned=1&gt;" in page
