"""One page's load in Debian's Chromium, measured as a visitor meets it: paints, interactive, bytes, elements.

Each load is in a new browser context (no cache, no cookie), through Playwright driving
/usr/bin/chromium (never a downloaded browser). An init script records long tasks; once the page has
been quiet for QUIET_MS, the navigation and paint entries, the resources and the DOM are read (METRICS).
Interactive is the latest of DOMContentLoaded, the end of the last long task and the end of the last
request the page's script made (fetch, XHR, an event stream that ended).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def static_html(size: int) -> bytes:
    """Plain HTML of `size` bytes: a table of job rows, no script, no style sheet."""
    head = b"<!doctype html><html><head><meta charset=utf-8><title>static</title></head><body><table>\n"
    tail = b"</table></body></html>\n"
    rows, index = [], 0
    room = size - len(head) - len(tail)
    while room > 0:
        row = f"<tr><td>score_{index:04d}</td><td>SUCCEEDED</td><td>1</td><td>42.0 s</td></tr>\n".encode()
        if len(row) > room:
            row = b" " * room
        rows.append(row)
        room -= len(row)
        index += 1
    return head + b"".join(rows) + tail


QUIET_MS = 500

INIT_SCRIPT = """window.__longTasks = [];
new PerformanceObserver(list => {
  for (const e of list.getEntries()) window.__longTasks.push([e.startTime, e.duration]);
}).observe({type: 'longtask', buffered: true});"""

METRICS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const paint = Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
  const resources = performance.getEntriesByType('resource');
  const fetches = resources.filter(r => ['fetch', 'xmlhttprequest', 'other'].includes(r.initiatorType));
  const tasks = window.__longTasks || [];
  return {ttfb: nav.responseStart, dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
          fp: paint['first-paint'] ?? null, fcp: paint['first-contentful-paint'] ?? null,
          document_bytes: nav.decodedBodySize, transferred: nav.transferSize
            + resources.reduce((sum, r) => sum + r.transferSize, 0),
          resources: resources.length, fetches: fetches.length,
          last_fetch: Math.max(0, ...fetches.map(r => r.responseEnd)),
          last_long_task: Math.max(0, ...tasks.map(([start, took]) => start + took)),
          long_tasks_ms: tasks.reduce((sum, [, took]) => sum + took, 0),
          elements: document.getElementsByTagName('*').length, now: performance.now()};
}"""


@dataclass(frozen=True)
class PageLoad:
    """The medians over N loads of one page, in ms; sizes of the last load."""

    ttfb: float
    fp: float
    fcp: float
    dcl: float
    load: float
    tti: float
    tti_high: float
    long_tasks_ms: float
    document_bytes: int
    transferred: int
    elements: int
    fetches: int


def page_loads(url: str, loads: int) -> PageLoad:
    """Load `url` `loads` times (after one warm-up), each in a new browser context, and measure it (see METRICS)."""
    from playwright.sync_api import sync_playwright

    samples: list[dict[str, float]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for run in range(loads + 1):
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.add_init_script(INIT_SCRIPT)
                response = page.goto(url, wait_until="load", timeout=60_000)
                if response is None or response.status != 200:
                    raise SystemExit(f"{url} answered {None if response is None else response.status}")
                metrics = quiet(page)
                context.close()
                metrics["tti"] = max(metrics["dcl"], metrics["last_long_task"], metrics["last_fetch"])
                if run:
                    samples.append(metrics)
        finally:
            browser.close()

    def median(key: str) -> float:
        values = [sample[key] for sample in samples if sample[key] is not None]
        return statistics.median(values) if values else float("nan")

    last = samples[-1]
    return PageLoad(median("ttfb"), median("fp"), median("fcp"), median("dcl"), median("load"), median("tti"),
                    max(sample["tti"] for sample in samples), median("long_tasks_ms"), int(last["document_bytes"]),
                    int(last["transferred"]), int(last["elements"]), int(last["fetches"]))


def quiet(page: Any) -> dict[str, float]:
    """The page's metrics once no long task ended and no fetch finished for QUIET_MS (at most 15 s after load)."""
    deadline = time.monotonic() + 15
    while True:
        metrics: dict[str, float] = page.evaluate(METRICS)
        busy_until = max(metrics["load"], metrics["last_long_task"], metrics["last_fetch"])
        if metrics["now"] - busy_until >= QUIET_MS or time.monotonic() > deadline:
            return metrics
        page.wait_for_timeout(QUIET_MS - (metrics["now"] - busy_until) + 10)
