"""Find a Docker Engine API to talk to, or start Podman's, and stop what we started.

Order: DOCKER_HOST if set; else a Podman or Docker socket that answers `_ping`; else
`podman system service` on a socket under jobgraph's folder, stopped again by `stop()`.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from jobgraph.errors import RunnerError

WELL_KNOWN_SOCKETS = {
    "podman": ("/run/podman/podman.sock", "/run/user/0/podman/podman.sock"),
    "docker": ("/var/run/docker.sock",),
}
START_TIMEOUT_SECS = 15.0


@dataclass
class EngineService:
    """A reachable engine API; `process` is set when jobgraph started it and must stop it."""

    base_url: str
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Stop the API service if jobgraph started it (containers are not touched)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


def ping(base_url: str, timeout: float = 2.0) -> bool:
    """True if the Engine API at a unix:// URL answers `_ping`."""
    if not base_url.startswith("unix://"):
        return True
    path = base_url.removeprefix("unix://")
    if not Path(path).exists():
        return False
    connection = _UnixConnection(path, timeout)
    try:
        connection.request("GET", "/_ping")
        return connection.getresponse().read() == b"OK"
    except OSError:
        return False
    finally:
        connection.close()


def find_or_start(engine: str, folder: Path) -> EngineService:
    """The engine API to use for `engine` (podman or docker), starting Podman's service if needed."""
    configured = os.environ.get("DOCKER_HOST")
    if configured:
        if not ping(configured):
            raise RunnerError(f"no container engine answers at DOCKER_HOST={configured}")
        return EngineService(configured)
    for path in WELL_KNOWN_SOCKETS.get(engine, ()):
        if ping(f"unix://{path}"):
            return EngineService(f"unix://{path}")
    if engine != "podman" or shutil.which("podman") is None:
        raise RunnerError(
            f"no {engine} engine is reachable (set DOCKER_HOST, or install Podman: "
            "`bash scripts/setup-podman.sh`; `jobgraph doctor` says more)")
    return start_podman_service(folder / "podman.sock")


def start_podman_service(socket_path: Path) -> EngineService:
    """Start `podman system service` in its own session and wait until it answers."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    url = f"unix://{socket_path.resolve()}"
    log = (socket_path.parent / "podman-service.log").open("ab")
    # Its own folder as working directory: conmon drops files there (an `oom` marker on an OOM kill).
    process = subprocess.Popen(["podman", "system", "service", "--time=0", url], stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               cwd=socket_path.parent)
    log.close()
    service = EngineService(url, process)
    deadline = time.monotonic() + START_TIMEOUT_SECS
    while not ping(url, timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise RunnerError(f"podman system service did not start; see {socket_path.parent / 'podman-service.log'}")
        time.sleep(0.05)
    return service


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)
