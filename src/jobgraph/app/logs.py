"""Reading an attempt's log for the HTTP API and `logs --follow`: a chunk at an offset, or the tail.

Split from app/queries.py: the one read there of a file a job may have planted (runners/output's
open_regular refuses anything but a regular file), rather than of the store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, select

from jobgraph.app.queries import BadRequest, NotFound, Refused, run_row
from jobgraph.states import AttemptStatus
from jobgraph.store import Store
from jobgraph.store.tables import attempts

MAX_LOG_CHUNK = 1 << 20
"""The most bytes of a log one request reads."""

MAX_ATTEMPT = (1 << 31) - 1
"""No attempt number is bigger (a larger one asked for is simply not there)."""



@dataclass(frozen=True)
class LogChunk:
    """Part of an attempt's log: the bytes, where the next read starts, and whether nothing more will come."""

    data: bytes
    next_offset: int
    complete: bool


def read_log(records: Store, run_id: str, job: str, attempt: int, offset: int = 0,
             limit: int = 1 << 16) -> LogChunk:
    """Up to `limit` bytes of an attempt's log from `offset`, as stored (redacted as it was written).

    A negative `offset` counts from the end (the tail: -65536 is the last 64 KiB, started at a whole
    character); `next_offset` is where to go on from, to follow the log as it grows.

    Never a link or a special file a job planted in its place (runners/output.open_regular raises
    UnsafeFile); a chunk never ends inside a UTF-8 character unless the log itself does.
    """
    from jobgraph.runners.output import UnsafeFile, open_regular

    if not 1 <= limit <= MAX_LOG_CHUNK:
        raise BadRequest(f"limit must be between 1 and {MAX_LOG_CHUNK}, not {limit}")
    if not 1 <= attempt <= MAX_ATTEMPT:  # the store's integers are 64-bit: a bigger one fails in the driver
        raise NotFound(f"run {run_id} has no attempt {attempt} of job {job!r}")
    with records.engine.connect() as conn:
        run_row(conn, run_id)
        row = conn.execute(select(attempts.c.log_path, attempts.c.status).where(and_(
            attempts.c.run_id == run_id, attempts.c.task == job, attempts.c.attempt == attempt))).first()
    if row is None:
        raise NotFound(f"run {run_id} has no attempt {attempt} of job {job!r}")
    ended = row.status != AttemptStatus.RUNNING.value
    try:
        fd = open_regular(Path(row.log_path))
    except FileNotFoundError:
        return LogChunk(b"", max(offset, 0), ended)
    except UnsafeFile as exc:
        raise Refused(f"the log of attempt {attempt} of job {job!r} is not shown: {exc}") from None
    try:
        size = os.fstat(fd).st_size
        if offset < 0:
            offset = max(size + offset, 0)
            if 0 < offset < size:  # a tail starts at a whole character: past at most 3 continuation bytes
                head = os.pread(fd, 3, offset)
                offset += next((i for i, byte in enumerate(head) if byte & 0xC0 != 0x80), len(head))
        data = os.pread(fd, min(limit, max(size - offset, 0)), offset) if offset < size else b""
    finally:
        os.close(fd)
    if len(data) == limit:
        data = data[:_whole_characters(data)]
    end = offset + len(data)
    return LogChunk(data, end, ended and end >= size)


def _whole_characters(data: bytes) -> int:
    """How many leading bytes of `data` end on a UTF-8 character boundary (a cut multibyte character left out)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # a lead byte: is its character complete?
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= needed else len(data) - back
    return len(data)
