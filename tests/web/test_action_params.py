"""The API's trigger takes the run's params in its body, `{"params": {...}}`, checked like `--param` (400 naming
each bad one, nothing run), recorded with the run and shown in its detail."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from jobgraph.app.host import RunHost
from jobgraph.store import Store
from jobgraph.store.tokens import Scope
from tests.conftest import Cli, WritePipeline, store_url
from tests.web.conftest import bearer, call, make_token, served


def test_trigger_with_params_in_the_body(cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    out = tmp_path / "argv"
    program = f"import sys; open({str(out)!r}, 'a').write(' '.join(sys.argv[1:]) + chr(10))"
    write_pipeline({"name": "nightly", "params": [{"name": "day", "type": "date", "default": "2024-01-01"},
                                                  {"name": "n", "type": "integer", "default": 1}],
                    "jobs": [{"name": "a", "command": ["python", "-c", program, "{{ params.day }}",
                                                       "{{ params.n }}"]}]})
    cli("deploy", "pipeline.yaml", check=0)
    url = store_url(tmp_path)
    operate = make_token(url, Scope.OPERATE, "ops")
    with Store(url) as records:
        host = RunHost(records, None, lambda _line: None)
        with served(url, host=host) as app:

            async def work(client: httpx.AsyncClient) -> list[httpx.Response]:
                answers = []
                for body in ({"params": {"day": "2031-02-03", "n": "7"}}, {"params": {"n": 2}}, None,
                             {"params": {"dya": "2031-02-03"}}, {"params": {"n": 1.5}}, {"params": [1]},
                             {"other": 1}, "not json"):
                    content = body if isinstance(body, str) else None if body is None else json.dumps(body)
                    answers.append(await client.post("/api/v1/pipelines/nightly/trigger", content=content,
                                                     headers=bearer(operate)))
                    deadline = time.monotonic() + 60
                    while host.running():
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)
                detail = await client.get(f"/api/v1/runs/{answers[0].json()['run_id']}", headers=bearer(operate))
                page = await client.get(f"/runs/{answers[0].json()['run_id']}", headers=bearer(operate))
                await host.close(drain=False)
                return [*answers, detail, page]

            *answers, detail, page = call(app, work)
        assert [a.status_code for a in answers] == [202, 202, 202, 400, 400, 400, 400, 400]
        assert out.read_text().splitlines() == ["2031-02-03 7", "2024-01-01 2", "2024-01-01 1"]
        assert "field 'params.dya': unknown parameter 'dya' (did you mean 'day'?)" in answers[3].json()["error"]
        assert "parameter 'n' is of type integer: expected an integer, got a number" in answers[4].json()["error"]
        assert '"params" must be an object' in answers[5].json()["error"]
        assert "only \"params\"" in answers[6].json()["error"] and "not JSON" in answers[7].json()["error"]
        assert detail.json()["run"]["params"] == {"day": "2031-02-03", "n": 7}
        assert 'params: <code>{&#34;day&#34;: &#34;2031-02-03&#34;, &#34;n&#34;: 7}</code>' in page.text
        assert len(records.runs(20, "nightly")) == 3


def test_a_trigger_whose_params_hold_lone_surrogates_is_a_400_naming_them(
        cli: Cli, write_pipeline: WritePipeline, tmp_path: Path) -> None:
    out = tmp_path / "argv"
    write_pipeline({"name": "nightly", "params": [{"name": "label", "type": "string", "default": "x"}],
                    "jobs": [{"name": "a", "command": ["python", "-c", f"open({str(out)!r}, 'a').write('ran')"]}]})
    cli("deploy", "pipeline.yaml", check=0)
    url = store_url(tmp_path)
    operate = make_token(url, Scope.OPERATE, "ops")
    bodies = ['{"params": {"\\ud800": "x"}}', '{"params": {"label": "\\udcff"}}']
    with Store(url) as records:
        host = RunHost(records, None, lambda _line: None)
        with served(url, host=host) as app:
            async def work(client: httpx.AsyncClient) -> list[httpx.Response]:
                answers = [await client.post("/api/v1/pipelines/nightly/trigger", content=body,
                                             headers=bearer(operate)) for body in bodies]
                await host.close(drain=False)
                return answers
            answers = call(app, work)
        assert [a.status_code for a in answers] == [400, 400]
        assert "unknown parameter '\\ud800'" in answers[0].json()["error"]
        assert "parameter 'label' is of type string: the value is not UTF-8 text" in answers[1].json()["error"]
        assert records.runs(20, "nightly") == [] and not out.exists()
