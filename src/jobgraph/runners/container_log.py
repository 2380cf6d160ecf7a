"""A container's output, kept in its attempt's log: what was already copied, and the copy from the engine.

Split from runners/container.py. On Podman's local socket the attached stream writes into the log as
the job prints; elsewhere (and past a broken stream) the engine's log is read again in chunks and only
what is new is written. EngineLog keeps the count, so neither path writes a byte twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import docker.errors
import requests.exceptions
from docker.models.containers import Container

from jobgraph.runners.engine_api import output_chunks
from jobgraph.runners.output import LogWriter


@dataclass
class EngineLog:
    """How much of a container's output is already in its log; one copy at a time (the lock)."""

    writer: LogWriter
    copied: int = 0
    closed: bool = False
    complete: bool = False
    """The whole output came through the attached stream: nothing to read from the engine's log."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def copy_logs(container: Container, log: EngineLog, final: bool) -> None:
    """Stream the container's output from the engine into its log, skipping what an earlier copy stored.

    The engine's log is read again from its start each time (the API has no byte offset), in chunks:
    memory stays bounded whatever the job printed, and once the log is cut nothing more is fetched.
    """
    with log.lock:
        if log.closed:
            return
        try:
            if not log.writer.cut and not log.complete:
                position = 0
                for chunk in output_chunks(container):
                    end = position + len(chunk)
                    if end > log.copied:
                        log.writer.write(chunk[max(0, log.copied - position):])
                        log.copied = end
                    position = end
                    if log.writer.cut:
                        break
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            pass  # the engine is gone or the container removed: keep what was stored
        finally:
            if final:
                log.writer.close()
                log.closed = True
