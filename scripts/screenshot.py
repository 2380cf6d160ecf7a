"""Take docs/run-page.png, the README's picture of the run page, with the browser tests' own tooling.

The seed's story is run for real (`jobgraph run`, then its failure simulation) in a temporary folder,
served as the tests serve it, and Debian's Chromium photographs the failed run's page with the log of
t_myjob_3's last attempt open. Run from the repository: `.venv/bin/python scripts/screenshot.py`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from playwright.sync_api import expect, sync_playwright  # noqa: E402
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, folder_store, seed_story, start_server  # noqa: E402


def main(out: Path = REPO / "docs" / "run-page.png") -> None:
    """Run the seed's story, serve it, and save the failed run's page as a PNG."""
    folder = Path(tempfile.mkdtemp(prefix="jobgraph-screenshot-"))
    try:
        failed, _ = seed_story(folder)
        server, stop = start_server(folder_store(folder))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.goto(f"{server.url}/runs/{failed}")
                page.click('tbody.job[data-job="t_myjob_3"] tr.attempt-row:last-child .log-button')
                expect(page.locator("#log-status")).to_contain_text("ended")
                out.parent.mkdir(exist_ok=True)
                height = page.evaluate("document.documentElement.scrollHeight")
                page.set_viewport_size({"width": 1200, "height": height})  # the whole page, log panel at its foot
                page.screenshot(path=str(out))
                browser.close()
        finally:
            stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
