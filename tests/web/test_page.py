"""The web page in a real browser (Debian's Chromium through Playwright) over a real server and real stores."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from playwright.sync_api import Page, expect

from jobgraph.states import TaskState
from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from tests.web.conftest import Seed, Server, WebProcess, folder_store, jobgraph, record_run

HOSTILE = "<img src=x onerror=window.__pwned=1>"


def job_states(page: Page) -> dict[str, str]:
    """Each listed job's state as the page shows it."""
    return page.eval_on_selector_all(
        "tbody.job",
        "rows => Object.fromEntries(rows.map(r => [r.dataset.job, r.querySelector('[data-state-of]').textContent]))")


def test_the_seed_failure_story_on_its_run_page(seed: Seed, page: Page) -> None:
    page.goto(f"{seed.server.url}/runs/{seed.failed}")
    assert job_states(page) == {"t_myjob_1": "SUCCEEDED", "t_myjob_2": "SUCCEEDED", "t_myjob_3": "FAILED",
                                "t_myjob_4": "SUCCEEDED", "t_myjob_5": "SUCCEEDED", "t_myjob_6": "SKIPPED"}
    expect(page.locator("#run-state")).to_have_text("FAILED")
    nodes = page.eval_on_selector_all("svg.dag .node", "ns => ns.map(n => [n.dataset.job, n.getAttribute('class')])")
    assert dict(nodes) == {"t_myjob_1": "node s-SUCCEEDED", "t_myjob_2": "node s-SUCCEEDED",
                           "t_myjob_3": "node s-FAILED", "t_myjob_4": "node s-SUCCEEDED",
                           "t_myjob_5": "node s-SUCCEEDED", "t_myjob_6": "node s-SKIPPED"}
    assert page.locator("svg.dag path.edge").count() == 6
    attempts = page.locator('tbody.job[data-job="t_myjob_3"] tr.attempt-row')
    expect(attempts).to_have_count(3)
    for n in range(3):
        row = attempts.nth(n)
        expect(row).to_contain_text(f"attempt {n + 1}")
        expect(row.locator(".state")).to_have_text("FAILED")
        expect(row).to_contain_text("exit 1")
        expect(row.locator("pre.error")).to_contain_text("table results_3 has no column named 'hello'")
    bars = page.locator('svg.gantt .attempt[data-job="t_myjob_3"]')
    expect(bars).to_have_count(3)
    assert all("a-FAILED" in (bars.nth(n).get_attribute("class") or "") for n in range(3))
    expect(page.locator("svg.gantt .cross")).to_have_count(3)
    expect(page.locator("svg.gantt line.wait")).to_have_count(2)  # the retry delay between its attempts

    page.goto(f"{seed.server.url}/runs/{seed.succeeded[:8]}")
    assert set(job_states(page).values()) == {"SUCCEEDED"} and len(job_states(page)) == 6


def test_the_seed_runs_on_the_runs_and_pipelines_pages(seed: Seed, page: Page) -> None:
    page.goto(f"{seed.server.url}/runs?pipeline=root_task")
    rows = page.locator("#runs tbody tr")
    expect(rows).to_have_count(2)
    assert [rows.nth(n).get_attribute("data-run") for n in range(2)] == [seed.failed, seed.succeeded]
    page.select_option("select[name=state]", "FAILED")
    page.click("form.filter button")
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    assert page.locator("#runs tbody tr").get_attribute("data-run") == seed.failed
    page.click(f'#runs a[href$="/runs/{seed.failed}"]')
    expect(page.locator("#run-state")).to_have_text("FAILED")
    page.goto(seed.server.url)
    expect(page.locator('#by-hand tr[data-pipeline="root_task"]')).to_contain_text("FAILED")
    missing = page.goto(f"{seed.server.url}/runs/0000dead")
    assert missing is not None and missing.status == 404
    expect(page.locator("main")).to_contain_text("no run with id '0000dead'")
    bad = page.goto(f"{seed.server.url}/runs?state=BORED")
    assert bad is not None and bad.status == 400
    expect(page.locator("main")).to_contain_text("unknown run state 'BORED'")


def test_the_runs_list_pages_with_its_cursor(tmp_path: Path, serve: Callable[[str], Server], page: Page) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    made = [record_run(url, {"only": ()}, {}, pipeline="many") for _ in range(55)]
    server = serve(url)
    page.goto(f"{server.url}/runs?pipeline=many")
    expect(page.locator("#runs tbody tr")).to_have_count(50)
    first = page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")
    page.click("#next-page")
    expect(page.locator("#runs tbody tr")).to_have_count(5)
    second = page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")
    assert sorted(first + second) == sorted(made)
    expect(page.locator("#next-page")).to_have_count(0)


def test_a_hostile_job_name_and_error_render_as_text(tmp_path: Path, serve: Callable[[str], Server],
                                                     page: Page) -> None:
    url = f"sqlite:///{tmp_path / 'hostile.db'}"
    log = tmp_path / "hostile.log"
    log.write_text(f"printed {HOSTILE} and <script>window.__pwned=3</script>\n")
    run_id = record_run(url, {HOSTILE: (), "after": (HOSTILE,)}, {HOSTILE: TaskState.FAILED},
                        errors={HOSTILE: "<script>window.__pwned=2</script>"}, pipeline="<b>p</b>", log=log)
    server = serve(url)
    for path in (f"/runs/{run_id}", "/runs", "/"):
        page.goto(server.url + path)
        page.wait_for_load_state("load")
        assert page.evaluate("window.__pwned") is None
        assert page.locator("main img, main script, main b").count() == 0
    page.goto(f"{server.url}/runs/{run_id}")
    expect(page.locator("tbody.job td.name").first).to_have_text(HOSTILE)
    expect(page.locator("pre.error")).to_have_text("<script>window.__pwned=2</script>")
    expect(page.locator("svg.dag .node text").first).to_contain_text("<img")
    page.locator("tbody.job .log-button").first.click()
    expect(page.locator("#log")).to_have_text(f"printed {HOSTILE} and <script>window.__pwned=3</script>\n")
    expect(page.locator("#log-title")).to_have_text(f"{HOSTILE}, attempt 1")
    assert page.locator("main img, main script, main b").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_a_5000_job_run_page_stays_small_and_interactive(tmp_path: Path, serve: Callable[[str], Server],
                                                         page: Page) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    fan = [f"part_{n:04d}" for n in range(4998)]
    jobs: dict[str, tuple[str, ...]] = {"extract": (), **{name: ("extract",) for name in fan}, "merge": tuple(fan)}
    states = {name: TaskState.FAILED for name in fan[::1000]} | {"merge": TaskState.SKIPPED}
    run_id = record_run(url, jobs, states, errors={name: f"{name} broke" for name in fan})
    server = serve(url)
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    started = time.perf_counter()
    page.goto(f"{server.url}/runs/{run_id}")
    page.wait_for_load_state("load")
    loaded = time.perf_counter() - started
    elements = page.evaluate("document.getElementsByTagName('*').length")
    timing = page.evaluate("(({responseStart, responseEnd, domInteractive, loadEventEnd}) => "
                           "[responseStart, responseEnd, domInteractive, loadEventEnd])"
                           "(performance.getEntriesByType('navigation')[0].toJSON())")
    print(f"5,000-job run page: goto to load {loaded:.2f} s; first byte {timing[0]:.0f} ms, "
          f"last byte {timing[1]:.0f} ms, interactive {timing[2]:.0f} ms, load {timing[3]:.0f} ms; {elements} elements")
    assert elements < 6000
    folded = page.locator("svg.dag .node.folded")
    expect(folded).to_have_count(1)
    expect(folded.locator("text").first).to_have_text("4998 jobs")
    assert "s-FAILED" in (folded.get_attribute("class") or "")
    assert "4993 succeeded" in (folded.locator("title").text_content() or "")
    expect(page.locator("svg.dag .node")).to_have_count(3)
    page.wait_for_timeout(1500)
    # An ended run is drawn complete: no event stream (its snapshot alone is 2 MB here), nothing drawn again.
    assert not [url for url in fetched if "/parts" in url or "/events" in url]
    expect(page.locator("tbody.job")).to_have_count(200)
    expect(page.locator(".pager")).to_contain_text("page 1 of 25")
    page.click("#failures-first")
    expect(page.locator("tbody.job").first.locator("[data-state-of]")).to_have_text("FAILED")
    listed = page.eval_on_selector_all("tbody.job", "rows => rows.slice(0, 6).map(r => r.dataset.job)")
    assert listed == [*fan[::1000], "merge"]
    expect(page.locator("tbody.job").first.locator("pre.error")).to_have_text(f"{fan[0]} broke")


def start_live_run(folder: Path, jobs: list[dict[str, object]]) -> tuple[subprocess.Popen[str], str]:
    """`jobgraph run` in the background; returns once its store shows every one of its jobs RUNNING."""
    (folder / "pipeline.yaml").write_text(yaml.safe_dump({"name": "live", "images": {"sh": ["sh", "-c"]},
                                                          "defaults": {"pool_size": 4}, "jobs": jobs}))
    env = {**os.environ, "JOBGRAPH_HOME": str(folder / ".jobgraph")}
    env.pop("JOBGRAPH_STORE", None)
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "run", "pipeline.yaml"], cwd=folder, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (folder / ".jobgraph" / "jobgraph.db").exists():
            with Store(folder_store(folder)) as records:
                running = records.running_runs()
                if running and all(t.state == "RUNNING" for t in records.tasks(running[0].run_id)):
                    return process, running[0].run_id
        time.sleep(0.1)
    process.kill()
    raise AssertionError("the run did not start: " + process.communicate()[1])


def test_a_job_changes_colour_live_when_its_run_finishes_it(tmp_path: Path, serve: Callable[[str], Server],
                                                              page: Page) -> None:
    go = tmp_path / "go"
    process, run_id = start_live_run(tmp_path, [
        {"name": "waiter", "image": "sh", "args": [f"while [ ! -e {go} ]; do sleep 0.1; done; echo went"]}])
    try:
        server = serve(folder_store(tmp_path))
        page.goto(f"{server.url}/runs/{run_id}")
        node = page.locator('svg.dag .node[data-job="waiter"]')
        expect(node).to_have_class("node s-RUNNING")
        expect(page.locator("#run-state")).to_have_text("RUNNING")
        page.evaluate("window.__same_page = true")
        go.touch()
        assert process.wait(timeout=30) == 0
        expect(node).to_have_class("node s-SUCCEEDED", timeout=10_000)
        expect(page.locator('[data-state-of="waiter"]')).to_have_text("SUCCEEDED")
        expect(page.locator("#run-state")).to_have_text("SUCCEEDED")
        expect(page.locator('svg.gantt .attempt[data-job="waiter"]')).to_have_class("attempt a-DONE")
        assert page.evaluate("window.__same_page") is True  # updated in place, never reloaded
    finally:
        process.kill()
        process.wait()


def test_a_running_jobs_log_updates_live_in_the_log_panel(tmp_path: Path, serve: Callable[[str], Server],
                                                           page: Page) -> None:
    stop = tmp_path / "stop"
    process, run_id = start_live_run(tmp_path, [
        {"name": "ticker", "image": "sh",
         "args": [f"i=0; while [ ! -e {stop} ] && [ $i -lt 60 ]; do i=$((i+1)); echo line $i; sleep 1; done"]}])
    try:
        server = serve(folder_store(tmp_path))
        page.goto(f"{server.url}/runs/{run_id}")
        page.click('tbody.job[data-job="ticker"] .log-button')
        log = page.locator("#log")
        expect(log).to_contain_text("line 1")
        expect(page.locator("#log-status")).to_contain_text("following")
        seen = int(re.findall(r"line (\d+)", log.text_content() or "")[-1])
        expect(log).to_contain_text(f"line {seen + 2}", timeout=10_000)  # lines printed after the panel opened
        stop.touch()
        assert process.wait(timeout=30) == 0
        expect(page.locator("#log-status")).to_contain_text("ended", timeout=10_000)
        text = log.text_content() or ""
        last = int(re.findall(r"line (\d+)", text)[-1])
        assert [f"line {n}" for n in range(1, last + 1)] == re.findall(r"line \d+", text)  # each line once, in order
    finally:
        process.kill()
        process.wait()


def click_and_read(page: Page, selector: str) -> str:
    """Click an action button and return the message the page shows for it."""
    message = page.locator("#message")
    page.evaluate("document.getElementById('message').textContent = ''")
    page.click(selector)
    expect(message).not_to_have_text("")
    return message.text_content() or ""


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_trigger_retry_and_cancel_from_the_page_need_an_operate_token(
        tmp_path: Path, jobgraph_web: Callable[[Path], WebProcess], page: Page) -> None:
    hold, fixed = tmp_path / "hold", tmp_path / "fixed"
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({
        "name": "steer", "images": {"sh": ["sh", "-c"]},
        "jobs": [{"name": "check", "image": "sh", "args": [f"if [ -e {hold} ]; then sleep 300; fi; [ -e {fixed} ]"]}],
    }))
    jobgraph(tmp_path, "run", "pipeline.yaml", check=1)
    jobgraph(tmp_path, "deploy", "pipeline.yaml")
    url = folder_store(tmp_path)
    with Store(url) as records:
        (failed,) = [run.run_id for run in records.runs(5)]
    web = jobgraph_web(tmp_path)

    def runs() -> list[tuple[str, str, int]]:
        with Store(url) as records:
            return [(run.run_id, run.state, run.run_attempt) for run in records.runs(10)]

    before = runs()
    page.goto(f"{web.url}/runs/{failed}")
    assert "refused (401)" in click_and_read(page, "button[data-action=retry]")
    assert "refused (401)" in click_and_read(page, "button[data-action=cancel]")
    page.goto(web.url)
    assert "refused (401)" in click_and_read(page, "button[data-action=trigger]")
    time.sleep(1)
    assert runs() == before  # nothing was started, retried or cancelled

    secret = re.search(r"jg_[A-Za-z0-9_-]+", jobgraph(tmp_path, "token", "create", "ops", "--scope", "operate").stdout)
    assert secret
    page.click("#sign-in")
    page.fill("input[name=token]", secret.group(0))
    page.click("form.login button")
    expect(page.locator("header .who")).to_contain_text("ops")

    fixed.touch()
    page.goto(f"{web.url}/runs/{failed}")
    assert "retry: done" in click_and_read(page, "button[data-action=retry]")
    wait_for(lambda: (failed, "SUCCEEDED", 2) in runs(), "the retried run to succeed")
    expect(page.locator("#run-state")).to_have_text("SUCCEEDED", timeout=15_000)
    expect(page.locator('svg.gantt .attempt[data-job="check"]')).to_have_count(2)  # the Gantt, redrawn live
    expect(page.locator("svg.gantt line.wait")).to_have_count(1)  # the wait until someone retried it
    expect(page.locator('tbody.job[data-job="check"] tr.attempt-row').nth(1)).to_contain_text("(run attempt 2)")

    page.goto(web.url)
    steer = 'tr[data-pipeline="steer"]'
    assert "suspend: done (now SUSPENDED)" in click_and_read(page, f"{steer} button[data-action=suspend]")
    with Store(url) as records:
        assert Deployments(records).get("steer").state == "SUSPENDED"
    assert "resume: done (now ACTIVE)" in click_and_read(page, f"{steer} button[data-action=resume]")
    with Store(url) as records:
        assert Deployments(records).get("steer").state == "ACTIVE"

    hold.touch()
    assert "trigger: done" in click_and_read(page, f"{steer} button[data-action=trigger]")
    wait_for(lambda: len(runs()) == 2 and runs()[0][1] == "RUNNING", "the triggered run")
    triggered = runs()[0][0]
    page.goto(f"{web.url}/runs/{triggered}")
    assert "cancel: done" in click_and_read(page, "button[data-action=cancel]")
    wait_for(lambda: runs()[0][1] == "CANCELLED", "the cancelled run")
    with Store(url) as records:
        assert {task.state for task in records.tasks(triggered)} == {"CANCELLED"}
    expect(page.locator("#run-state")).to_have_text("CANCELLED", timeout=15_000)


def test_a_long_log_opens_at_its_tail(tmp_path: Path, serve: Callable[[str], Server], page: Page) -> None:
    log = tmp_path / "long.log"
    log.write_text("".join(f"line {n:06d} é\n" for n in range(200_000)))  # 3.2 MB, with two-byte characters
    run_id = record_run(f"sqlite:///{tmp_path / 'long.db'}", {"chatty": ()}, {}, log=log)
    server = serve(f"sqlite:///{tmp_path / 'long.db'}")
    page.goto(f"{server.url}/runs/{run_id}")
    page.click('tbody.job[data-job="chatty"] .log-button')
    expect(page.locator("#log-status")).to_contain_text("ended")
    text = page.locator("#log").text_content() or ""
    assert text.startswith("… (the first ") and text.endswith("line 199999 é\n")
    shown = [int(n) for n in re.findall(r"line (\d+) é", text)]
    assert shown == list(range(shown[0], 200_000)) and 10_000 < len(shown) < 20_000  # the last 256 KiB
