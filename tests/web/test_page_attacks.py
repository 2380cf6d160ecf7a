"""A signed-in browser visiting a hostile site: the site can neither frame the page (clickjacking of its buttons)
nor make the browser act on the server (CSRF by form, by fetch, with or without the header); Debian's Chromium."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

from playwright.sync_api import Page, expect

from jobgraph.store import Store
from jobgraph.store.deployments import Deployments
from jobgraph.store.tokens import Scope
from tests.web.conftest import Server, make_token


@contextlib.contextmanager
def hostile_site(html: str) -> Iterator[str]:
    """Another origin on this machine (another port of 127.0.0.1: the same site to the cookie, a different origin),
    serving one page; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}/"
    finally:
        site.shutdown()
        site.server_close()


def _state(url: str) -> str:
    with Store(url) as records:
        return Deployments(records).get("p").state


def test_a_hostile_site_can_neither_frame_nor_steer_a_signed_in_page(ran: dict[str, Any], page: Page,
                                                                     serve: Callable[[str], Server]) -> None:
    server = serve(ran["url"])
    operate = make_token(ran["url"], Scope.OPERATE, "alice")
    page.goto(f"{server.url}/login")
    page.fill("input[name=token]", operate)
    page.click("form.login button")
    expect(page.locator("header .who")).to_contain_text("alice")
    suspend = f"{server.url}/api/v1/pipelines/p/suspend"
    hostile = f"""<!doctype html><html><body>
<iframe id="framed" src="{server.url}/" width="800" height="400"></iframe>
<form id="form" method="post" action="{suspend}" target="sink"><input name="x" value="1"></form>
<iframe name="sink"></iframe>
<script>
window.results = {{}};
async function attempt(name, options) {{
  try {{ const r = await fetch("{suspend}", options); window.results[name] = r.status; }}
  catch (e) {{ window.results[name] = "blocked"; }}
}}
Promise.all([
  attempt("simple", {{method: "POST", credentials: "include", mode: "no-cors"}}),
  attempt("with_header", {{method: "POST", credentials: "include", headers: {{"X-Jobgraph-CSRF": "guess"}}}}),
]).then(() => {{ document.getElementById("form").submit(); window.done = true; }});
</script></body></html>"""
    with hostile_site(hostile) as evil:
        page.goto(evil)
        page.wait_for_function("window.done === true")
        page.wait_for_timeout(1500)  # the form's POST, had it been let through, has long been answered
    element = page.query_selector("#framed")
    framed = element.content_frame() if element is not None else None
    assert framed is not None and framed.url.startswith("chrome-error://"), "the page was shown inside another site"
    assert "Pipelines" not in framed.content()
    assert page.evaluate("window.results")["with_header"] == "blocked"  # no CORS: the preflight fails
    assert _state(ran["url"]) == "ACTIVE"  # neither the fetches nor the form suspended anything
    page.goto(f"{server.url}/")  # the page itself, on its own origin, still acts
    page.click("#pipelines tr[data-pipeline=p] button[data-action=suspend]")
    expect(page.locator("#message")).to_contain_text("suspend: done")
    assert _state(ran["url"]) == "SUSPENDED"
