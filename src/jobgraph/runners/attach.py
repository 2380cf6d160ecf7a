"""A container's output, attached before it starts, drained by the event loop into its log.

Podman's wait endpoint answers only once the container is cleaned up, and that cleanup is a new
`podman container cleanup` process that conmon starts when the job exits: 50-100 ms per container on
the critical path. Attached, the runner knows the job ended when the stream ends, reads the exit
code, and lets the cleanup run beside the next job. The stream is also the live log (no re-reading
of the engine's log) and holds no thread: a plain HTTP/1.1 connection on the engine's unix socket,
upgraded to the raw multiplexed stream (8-byte header: stream, 3 zero bytes, big-endian length).
The stream is read to its end even past the log's limit: conmon waits on a reader that stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable

from jobgraph.runners.output import CHUNK_BYTES

CONNECT_TIMEOUT_SECS = 30.0
"""How long the engine may take to answer the attach request (it creates the container's process)."""


class AttachError(Exception):
    """The engine refused or broke the attach; the caller falls back to waiting and reading the log."""


class AttachedOutput:
    """One container's attached stdout and stderr, copied by a task into `sink` until the stream ends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 sink: Callable[[bytes], None]) -> None:
        self._reader = reader
        self._writer = writer
        self._sink = sink
        self.task: asyncio.Task[bool] = asyncio.ensure_future(self._copy())

    async def _copy(self) -> bool:
        """True once the engine closed the stream cleanly (the container exited), False if it broke."""
        try:
            while True:
                header = await self._reader.readexactly(8)
                (length,) = struct.unpack(">xxxxL", header)
                while length:
                    piece = await self._reader.read(min(length, CHUNK_BYTES))
                    if not piece:
                        return False
                    length -= len(piece)
                    self._sink(piece)
        except asyncio.IncompleteReadError as exc:
            return not exc.partial
        except OSError:
            return False
        finally:
            self._writer.close()

    async def ended(self, timeout: float | None = None) -> bool | None:
        """Wait for the stream's end: True clean, False broken, None still open after `timeout`."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        """Stop reading (the container goes on) and release the connection."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def attach(socket_path: str, api_version: str, container_id: str,
                 sink: Callable[[bytes], None]) -> AttachedOutput:
    """Attach to a created, not yet started container's stdout and stderr (no stdin, no logs replay)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(socket_path, limit=CHUNK_BYTES),
                                                CONNECT_TIMEOUT_SECS)
    except (OSError, TimeoutError) as exc:
        raise AttachError(f"cannot connect to {socket_path}: {exc}") from None
    try:
        writer.write(f"POST /v{api_version}/containers/{container_id}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"
                     "Host: engine\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT_SECS)
        while await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT_SECS) not in (b"\r\n", b""):
            pass  # the response's headers: the stream follows them
        parts = status.split(maxsplit=2)
        if len(parts) < 2 or parts[1] not in (b"101", b"200"):
            body = await asyncio.wait_for(reader.read(2000), CONNECT_TIMEOUT_SECS)
            raise AttachError(f"the engine refused to attach: {status.decode(errors='replace').strip()} "
                              f"{body.decode(errors='replace').strip()}")
    except BaseException as exc:
        writer.close()
        if isinstance(exc, (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError)):
            raise AttachError(f"attach failed: {exc}") from None
        raise
    return AttachedOutput(reader, writer, sink)
