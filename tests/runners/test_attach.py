"""Attached containers on Podman: output live in the log, and the few API calls an attempt costs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from jobgraph.runners import container as container_module
from jobgraph.runners.attach import AttachError
from jobgraph.runners.base import JobSpec, Outcome
from jobgraph.runners.container import ContainerRunner
from jobgraph.states import AttemptStatus
from tests.runners.conftest import TEST_IMAGE

pytestmark = pytest.mark.usefixtures("no_leftovers")

REQUEST_LINE = re.compile(rb"(GET|POST|PUT|DELETE|HEAD) (/\S*) HTTP/1\.1\r\n")


def job(tmp_path: Path, name: str, script: str) -> JobSpec:
    """One attempt of a shell script in the test image; its out folder (mounted) lies under tmp_path."""
    logs = tmp_path / "logs"
    return JobSpec(run_id="0a77ac4e-0000-4000-8000-000000000000", pipeline="attach", task=name, attempt=1,
                   image=TEST_IMAGE, args=("sh", "-c", script), env={}, log_path=logs / f"{name}.log",
                   network="none", return_value_path=logs / f"{name}.return")


@contextlib.contextmanager
def recording_proxy(target: str) -> Iterator[tuple[str, list[str]]]:
    """A unix socket passing everything to the engine's, noting each request's method and path."""
    seen: list[str] = []
    loop = asyncio.new_event_loop()
    folder = tempfile.TemporaryDirectory(prefix="jobgraph-proxy-")  # a short path: sockets allow 107 bytes
    path = f"{folder.name}/engine.sock"

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool) -> None:
        try:
            while data := await reader.read(1 << 16):
                if record:
                    seen.extend(f"{m.group(1).decode()} {m.group(2).decode()}" for m in REQUEST_LINE.finditer(data))
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        engine_reader, engine_writer = await asyncio.open_unix_connection(target)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(client_reader, engine_writer, True), pipe(engine_reader, client_writer, False))

    server = loop.run_until_complete(asyncio.start_unix_server(serve, path))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def shut() -> None:
        server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    try:
        yield f"unix://{path}", seen
    finally:
        asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        folder.cleanup()


def test_an_attempt_costs_create_attach_start_one_state_look_and_remove(
        tmp_path: Path, engine: docker.DockerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """No `/version` (Podman runs conmon and runc to answer it), no inspect after create, no wait, no logs."""
    jobs = [job(tmp_path, "one", "echo one"), job(tmp_path, "two", "echo two >&2"), job(tmp_path, "bad", "exit 3")]
    with recording_proxy(os.environ["DOCKER_HOST"].removeprefix("unix://")) as (url, seen):  # the engine fixture's
        monkeypatch.setenv("DOCKER_HOST", url)

        async def main() -> list[Outcome]:
            runner = ContainerRunner("podman", tmp_path / ".jobgraph", cwd=tmp_path)
            try:
                handles = [await runner.start(spec) for spec in jobs]
                return [await runner.wait(handle) for handle in handles]
            finally:
                await runner.aclose()

        outcomes = asyncio.run(main())
    assert [(o.status, o.exit_code) for o in outcomes] == [
        (AttemptStatus.DONE, 0), (AttemptStatus.DONE, 0), (AttemptStatus.FAILED, 3)]
    assert [spec.log_path.read_text() for spec in jobs] == ["one\n", "two\n", ""]
    calls = [re.sub(r"/[0-9a-f]{64}", "/{id}", line).split("?")[0] for line in seen]
    assert not [c for c in calls if c.endswith("/version") or "/wait" in c or "/logs" in c], calls
    per_attempt = [c for c in calls if "/containers/" in c and not c.startswith("GET /v1.41/containers/json")]
    assert per_attempt.count("POST /v1.41/containers/create") == 3
    for call in ("POST /v1.41/containers/{id}/attach", "POST /v1.41/containers/{id}/start",
                 "DELETE /v1.41/containers/{id}"):
        assert per_attempt.count(call) == 3, calls
    looks = sum(c == "GET /v4.0.0/libpod/containers/{id}/json" for c in per_attempt)
    assert 3 <= looks <= 9, calls  # one each; more when the stream ends a moment before the exit file
    assert len(per_attempt) == 12 + looks, calls


def test_output_is_in_the_log_while_the_container_runs_and_a_cancel_keeps_it(
        tmp_path: Path, engine: docker.DockerClient) -> None:
    spec = job(tmp_path, "talker", "echo first; sleep 60; echo never")

    async def main() -> tuple[bytes, str]:
        runner = ContainerRunner("podman", tmp_path / ".jobgraph", cwd=tmp_path)
        try:
            handle = await runner.start(spec)
            deadline = time.monotonic() + 30
            while b"first" not in spec.log_path.read_bytes() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            seen = spec.log_path.read_bytes()
            status = engine.containers.get(runner.handle_ref(handle)).status
            await runner.cancel(handle)
            return seen, status
        finally:
            await runner.aclose()

    seen, status = asyncio.run(main())
    assert seen == b"first\n" and status == "running"
    assert spec.log_path.read_bytes() == b"first\n"



def test_an_engine_that_refuses_to_attach_gets_waited_on_and_its_log_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker, a remote engine or an attach refused: the same outcomes and logs, by wait and logs calls."""

    async def refuse(*_args: object) -> None:
        raise AttachError("refused")

    monkeypatch.setattr(container_module, "attach", refuse)
    jobs = [job(tmp_path, "chatty", "echo out; echo err >&2; head -c 300000 /dev/zero | tr '\\000' z"),
            job(tmp_path, "bad", "echo failing; exit 3")]

    async def main() -> list[Outcome]:
        runner = ContainerRunner("podman", tmp_path / ".jobgraph", cwd=tmp_path)
        try:
            handles = [await runner.start(spec) for spec in jobs]
            assert [handle.attached for handle in handles] == [None, None]
            return [await runner.wait(handle) for handle in handles]
        finally:
            await runner.aclose()

    outcomes = asyncio.run(main())
    assert [(o.status, o.exit_code) for o in outcomes] == [(AttemptStatus.DONE, 0), (AttemptStatus.FAILED, 3)]
    chatty = jobs[0].log_path.read_bytes()  # stdout and stderr are two pipes: their order may vary
    assert len(chatty) == 8 + 300_000 and chatty.count(b"z") == 300_000
    assert b"out\n" in chatty and b"err\n" in chatty
    assert jobs[1].log_path.read_bytes() == b"failing\n"
