"""`jobgraph web` (the page and the API over a store) and `jobgraph token` (who may use them).

The web server binds to 127.0.0.1 unless told otherwise; binding anywhere else is refused until a
live token exists, and then every read needs one too (jobgraph.web.auth). uvicorn and Starlette are
imported here, inside the commands, never by the rest of the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from jobgraph.cli.common import console, errors, reported, silence, store_url
from jobgraph.cli.render import write_line
from jobgraph.errors import JobgraphError
from jobgraph.store import Store
from jobgraph.store.faults import store_name
from jobgraph.store.tokens import Tokens, parse_scope, utcnow

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

    from jobgraph.app.host import RunHost
    from jobgraph.app.service import Alongside

GRACE_SECS = 2.0
"""How long a stopping server waits for open requests (an event stream never ends by itself)."""


FLUSH_SECS = 1.0
"""How often `jobgraph web` writes again what its hosted runs could not write while the store was down."""


def say(text: str) -> None:
    """One line of the server's output; a reader that went away silences it, the server goes on."""
    try:
        write_line(console, text)
    except OSError:
        silence(console.file)


def check_binding(records: Store, host: str) -> bool:
    """Whether the server is public (bound off loopback); refused (exit 2) if public and no token could sign in."""
    from jobgraph.web.auth import is_loopback

    if is_loopback(host):
        return False
    if not Tokens(records).any_live(utcnow()):
        raise JobgraphError(f"refusing to listen on {host}: off loopback every request needs a token, and this "
                            "store has none; make one first (`jobgraph token create NAME --scope read`), or "
                            "listen on 127.0.0.1")
    return True


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) as a host and a port; a JobgraphError naming what is wrong otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise JobgraphError(f"--http {text!r} is not HOST:PORT (e.g. 127.0.0.1:8787)")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that an address in use is a clear error (uvicorn would exit)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise JobgraphError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        busy = "; another server (another `jobgraph web`?) has that port: choose another with --port" \
            if exc.errno == errno.EADDRINUSE else ""
        raise JobgraphError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{busy}") from None
    return sock


class WebServer:
    """A uvicorn server on a socket bound beforehand, stopped by its owner (uvicorn's own signal handling is off)."""

    def __init__(self, host: str, port: int) -> None:
        self.socket = bind(host, port)
        name, bound = self.socket.getsockname()[:2]
        self.url = f"http://{f'[{name}]' if ':' in name else name}:{bound}/"
        if name in ("0.0.0.0", "::"):  # not an address a browser opens: name one that is
            self.url += f" (every address of this host, e.g. http://{socket.gethostname()}:{bound}/)"
        self.server: uvicorn.Server | None = None
        self.stopping = False

    async def serve(self, app: Starlette, started: Callable[[str], None]) -> None:
        """Serve `app` until `stop`; `started(url)` once it answers."""
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # the command's own handlers stop it; uvicorn must not re-raise the signal afterwards

        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=int(GRACE_SECS),
                                access_log=False)
        self.server = Quiet(config)
        self.server.should_exit = self.stopping
        task = asyncio.ensure_future(self.server.serve(sockets=[self.socket]))
        while not self.server.started and not task.done():
            await asyncio.sleep(0.02)
        if self.server.started:
            started(self.url)
        try:
            await task
        finally:
            self.socket.close()

    def stop(self) -> None:
        """Ask it to stop: new connections are refused, open ones get GRACE_SECS."""
        self.stopping = True
        if self.server is not None:
            self.server.should_exit = True


async def serve_web(url: str, host: str, port: int, public: bool, run_host: RunHost) -> None:
    """Serve the app on this loop until SIGINT or SIGTERM; then close the hosted runs (cancelled, recorded)."""
    from jobgraph.web.app import create_app

    server = WebServer(host, port)
    app = create_app(url, public=public, host=run_host)

    def stop() -> None:
        app.state.streams.closing = True
        server.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    needs = ", a token needed for every request" if public else ""

    async def flushing() -> None:
        """What a store that was down did not take from a hosted run is written again, as `serve` does each tick."""
        while True:
            await asyncio.sleep(FLUSH_SECS)
            run_host.flush()

    flusher = loop.create_task(flushing())
    try:
        await server.serve(app, lambda where: say(f"jobgraph web: {where} (store {store_name(url)}{needs})"))
    finally:
        flusher.cancel()
        running = run_host.running()
        if running:
            say(f"stopping: cancelling {len(running)} running run(s)")
        await run_host.close(drain=False)
        say("stopped")


def alongside_service(records: Store, url: str, address: str) -> Alongside:
    """The web server of `serve --http HOST:PORT`, bound now (a bad address stops the service before it starts),
    served with the service's RunHost until the service stops."""
    from jobgraph.web.app import create_app

    host, port = parse_address(address)
    public = check_binding(records, host)
    server = WebServer(host, port)

    async def serve(run_host: RunHost, stop: asyncio.Event) -> None:
        app = create_app(url, public=public, host=run_host)
        needs = ", a token needed for every request" if public else ""
        serving = asyncio.ensure_future(server.serve(app, lambda where: say(f"jobgraph web: {where}{needs}")))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
        app.state.streams.closing = True
        server.stop()
        stopped.cancel()
        await serving

    return serve


@reported
def web(host: str = "127.0.0.1", port: int = 8787, store: str | None = None, runner: str | None = None) -> None:
    """Serve the page and the API, with a RunHost for the runs it starts, until SIGINT or SIGTERM."""
    url = store_url(store)
    with Store(url) as records:
        public = check_binding(records, host)
        from jobgraph.app.host import RunHost

        async def main() -> None:
            await serve_web(url, host, port, public, RunHost(records, runner, say))

        asyncio.run(main())


@reported
def token_create(name: str, scope: str, expires: int | None = None, store: str | None = None) -> None:
    """Make a token and print it once: only its hash is kept."""
    if expires is not None and expires < 1:
        raise JobgraphError(f"--expires must be at least 1 day, not {expires}")
    with Store(store_url(store)) as records:
        secret, info = Tokens(records).create(name, parse_scope(scope), utcnow(),
                                              timedelta(days=expires) if expires else None)
    until = f", expires {info.expires_at:%Y-%m-%d %H:%M} UTC" if info.expires_at else ""
    errors.print(f"token {escape(info.name)} ({info.scope.value}{until}); it is shown this once, keep it now:")
    console.print(secret, soft_wrap=True)
    errors.print("sign in with it at /login of `jobgraph web`, or send it as `Authorization: Bearer jg_...`")


@reported
def token_list(store: str | None = None) -> None:
    """A table of the tokens: name, scope, dates, whether it can be used; never a secret."""
    now = utcnow()
    with Store(store_url(store)) as records:
        found = Tokens(records).all()
    table = Table(title="API tokens", title_justify="left")
    for column in ("name", "scope", "created (UTC)", "last used (UTC)", "expires (UTC)", "status"):
        table.add_column(column, overflow="fold")

    def when(moment: object) -> str:
        return f"{moment:%Y-%m-%d %H:%M}" if moment else "-"

    for info in found:
        status = "revoked" if info.revoked_at else "live" if info.live(now) else "expired"
        table.add_row(escape(info.name), info.scope.value, when(info.created_at), when(info.last_used_at),
                      when(info.expires_at), status)
    console.print(table)


@reported
def token_revoke(name: str, store: str | None = None) -> None:
    """Revoke the live tokens of that name: they stop working at once."""
    with Store(store_url(store)) as records:
        count = Tokens(records).revoke(name, utcnow())
    console.print(f"revoked {count} token(s) named {escape(name)}")
