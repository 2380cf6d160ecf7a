"""A job's output, read and written safely: the one place that touches what a job could have planted.

A job owns what it writes. It may turn its return-value file into a link to a host file, a FIFO, a
device or a 5 GB sparse file, and print gigabytes, secrets included. So, here and nowhere else:
- a file a job wrote is opened without following a link and without blocking (O_NOFOLLOW |
  O_NONBLOCK), and read only if fstat says it is the regular file lstat saw;
- every read of it is bounded; a log is written and shown as a stream, never held whole in memory;
- a log is created by jobgraph itself (O_EXCL, before the job starts) and written only through the
  descriptor it opened, redacted as it goes (a secret cut across two chunks included) and capped at
  the job's `log_limit`, so no log ever holds a secret, even after a `kill -9` of jobgraph;
- job output becomes text one way: invalid UTF-8 and NUL (which PostgreSQL's text refuses) become U+FFFD.

What a secret is and how it is hidden is runners/redaction.py's part.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

from jobgraph.runners.base import DEFAULT_LOG_LIMIT
from jobgraph.runners.redaction import Redactor, redactor_for

CHUNK_BYTES = 1 << 16
"""How much of a job's output is read or written at once: a pipe's default capacity."""

SCRUB_KEEP_BYTES = 1 << 16
"""What is kept of a return-value file that held a secret; only its first 10 kB are ever read."""


class UnsafeFile(OSError):
    """A job's file is not a regular file (a link, a FIFO, a device, a folder): jobgraph does not open it."""


def as_text(data: bytes) -> str:
    """Job output as text that every store accepts: invalid UTF-8 and NUL become U+FFFD."""
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def open_regular(path: Path, dir_fd: int | None = None) -> int:
    """Open a file a job may have written, read-only; raise UnsafeFile unless it is a regular file.

    lstat first, so a FIFO or a device is never even opened (opening one can block or act); then open
    without following a link and without blocking, and check it is still the file lstat saw.
    """
    seen = os.lstat(path, dir_fd=dir_fd)
    if not stat.S_ISREG(seen.st_mode):
        raise UnsafeFile(f"{path} is not a regular file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UnsafeFile(f"{path} cannot be opened safely: {exc.strerror}") from None
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)
        raise UnsafeFile(f"{path} changed while it was opened")
    return fd


def read_bounded(path: Path, max_bytes: int, dir_fd: int | None = None) -> bytes:
    """At most `max_bytes` from the start of a job's regular file (OSError if it is missing or unsafe)."""
    fd = open_regular(path, dir_fd)
    try:
        return _read_upto(fd, max_bytes, 0)
    finally:
        os.close(fd)


def _read_upto(fd: int, max_bytes: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while max_bytes > 0:
        part = os.pread(fd, min(max_bytes, CHUNK_BYTES), offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
        max_bytes -= len(part)
    return b"".join(parts)


def read_return_value(path: Path, redactor: Redactor, max_bytes: int) -> str | None:
    """A job's return value: the first `max_bytes` of its file, redacted, as text; None if there is none.

    A secret that straddles the cut is still hidden: the read goes on for one secret's length, and
    the cut is made after redaction.
    """
    try:
        data = read_bounded(path, max_bytes + max(redactor.longest - 1, 0))
    except OSError:
        return None
    return as_text(redactor.data(data)[:max_bytes]).rstrip("\n")


def return_value_of(path: Path | None, secret_values: frozenset[str], max_bytes: int) -> str | None:
    """The return value a job left in its local file (the local and container runners' way)."""
    return None if path is None else read_return_value(path, redactor_for(secret_values), max_bytes)


def scrub_return_file(path: Path, redactor: Redactor) -> None:
    """Leave no secret in a return-value file, however the attempt ended; never raises.

    A regular file that holds one is replaced (a new file, then a rename, never a write through what
    the job left) by its redacted first SCRUB_KEEP_BYTES; if that cannot be written, it is removed.
    Anything else is left alone: a link or a FIFO holds no data of its own, and is never followed.
    """
    if not redactor:
        return
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fd = open_regular(Path(path.name), folder)
        try:
            size = os.fstat(fd).st_size
            data = _read_upto(fd, SCRUB_KEEP_BYTES + redactor.longest - 1, 0)
        finally:
            os.close(fd)
        cleaned = redactor.data(data)[:SCRUB_KEEP_BYTES]
        if cleaned != data or size > SCRUB_KEEP_BYTES:
            _replace(path.name, cleaned, folder)
    except OSError:
        pass  # gone, or not a regular file: nothing of ours to clean
    finally:
        os.close(folder)


def _replace(name: str, data: bytes, folder: int) -> None:
    scratch = f".{name}.scrubbed"
    try:
        out = create_exclusive(Path(scratch), folder)
        try:
            _write_all(out, data)
        finally:
            os.close(out)
        os.replace(scratch, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError:  # no room for the redacted copy: then no copy at all
        for leftover in (scratch, name):
            with contextlib.suppress(OSError):
                os.unlink(leftover, dir_fd=folder)


def tail(path: Path, tail_bytes: int) -> str:
    """The last `tail_bytes` of a log as text (from its first whole line), for the error column."""
    try:
        fd = open_regular(path)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        data = _read_upto(fd, tail_bytes, max(0, size - tail_bytes))
    finally:
        os.close(fd)
    text = as_text(data)
    if size > tail_bytes:
        text = "..." + (text[text.find("\n") + 1 :] if "\n" in text else text)
    return text


def copy_out(fd: int, out: BinaryIO) -> int:
    """Copy an open log (see open_regular) to `out` chunk by chunk, whatever its size; return the bytes copied."""
    copied = 0
    while part := os.read(fd, 1 << 20):
        out.write(part)
        copied += len(part)
    return copied


def create_exclusive(path: Path, dir_fd: int | None = None) -> int:
    """Create a file for writing that nothing else had planted: whatever is at the path is unlinked first.

    O_EXCL | O_NOFOLLOW means the file is new and is never a link; unlinking what was there removes a
    leftover (or a link) itself, never what it points to.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o666, dir_fd=dir_fd)
    except FileExistsError:
        os.unlink(path, dir_fd=dir_fd)
        return os.open(path, flags, 0o666, dir_fd=dir_fd)


def prepare_out_folder(folder: Path) -> None:
    """A new, empty folder for one attempt's return value: the only place a container job may write."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder)
    except FileExistsError:
        if folder.is_symlink() or not folder.is_dir():
            folder.unlink()
        else:
            shutil.rmtree(folder)
        os.mkdir(folder)


def collect_return_file(folder: Path, name: str, target: Path) -> None:
    """Move a job's return file out of its out folder to where the engine reads it; remove the folder.

    Only a regular file is moved, by a rename (never followed, never copied); whatever else the job
    left there (links, FIFOs, other files) goes away with the folder. Harmless to call twice.
    """
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.lstat(folder / name).st_mode):
            os.replace(folder / name, target)
    shutil.rmtree(folder, ignore_errors=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class LogWriter:
    """One attempt's log: created by jobgraph, written through its own descriptor, redacted, capped.

    Bytes that could begin a secret are held back until the next chunk shows they do not (or the
    stream ends), so the file never holds even part of one. Past `limit` bytes a note says the log
    was cut and nothing more is stored; the job itself goes on. A failed write (disk full) stops the
    storing, never the job.
    """

    def __init__(self, path: Path, redactor: Redactor, limit: int = DEFAULT_LOG_LIMIT) -> None:
        _make_folder(path.parent)
        self.path = path
        self._fd = create_exclusive(path)
        self._redactor = redactor
        self._limit = limit
        self._written = 0
        self._held = b""
        self.cut = False
        self.failed: OSError | None = None

    def write(self, data: bytes) -> None:
        """Store a chunk of the job's output."""
        if self._fd < 0 or self.cut or self.failed:
            return
        if self._redactor:
            data = self._redactor.data(self._held + data)
            held = self._redactor.unsafe_tail(data)
            data, self._held = data[: len(data) - held], data[len(data) - held :]
        self._store(data)

    def _store(self, data: bytes) -> None:
        room = self._limit - self._written
        cut = len(data) > room
        if cut:
            data = data[:room] + (f"\n[jobgraph: the log reached its limit of {_size(self._limit)} (log_limit); "
                                  "the rest of the job's output is not stored]\n").encode()
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self.failed = exc
        self._written += len(data)
        self.cut = cut

    def close(self) -> None:
        """Write what was held back (the stream is over, so it is no secret) and close the file."""
        if self._fd < 0:
            return
        if self._held and not self.cut and not self.failed:
            self._store(self._held)
        self._held = b""
        os.close(self._fd)
        self._fd = -1


def _make_folder(folder: Path) -> None:
    """An attempt's folder: one system call when the run's folder exists (every attempt but a run's first)."""
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)


def _size(count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift and count % (1 << shift) == 0:
            return f"{count >> shift} {unit}"
    return f"{count} bytes"


class PipeCapture:
    """A job's stdout and stderr as a pipe that the event loop drains into the attempt's LogWriter.

    The job never holds the log file, so it cannot write a secret there, nor fill the disk past
    `log_limit`. One reader callback per job on a non-blocking pipe: no thread, and a job that prints
    faster than the disk takes only waits on its own pipe.
    """

    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer
        self._read_end, self.job_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._read_end, False)
        self._drained: asyncio.Future[None] | None = None

    def start(self) -> None:
        """The job holds its copy of the write end now: close ours and start draining."""
        os.close(self.job_end)
        self.job_end = -1
        loop = asyncio.get_running_loop()
        self._drained = loop.create_future()
        loop.add_reader(self._read_end, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._read_end, CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.writer.write(data)
        else:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self._drained is not None and not self._drained.done():
            asyncio.get_running_loop().remove_reader(self._read_end)
            self._drained.set_result(None)

    async def finish(self, grace: float = 2.0) -> None:
        """Store the rest of the output, then close; an escaped process that keeps the pipe gets `grace` s."""
        if self._drained is not None and not self._drained.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), grace)
        self.close()

    def close(self) -> None:
        """Stop reading (taking what the pipe holds now), close both ends and the log. Idempotent."""
        if self._drained is not None and not self._drained.done():
            self._stop_reading()
            for _ in range(64):
                try:
                    data = os.read(self._read_end, CHUNK_BYTES)
                except OSError:
                    break
                if not data:
                    break
                self.writer.write(data)
        for fd in (self._read_end, self.job_end):
            if fd >= 0:
                os.close(fd)
        self._read_end = self.job_end = -1
        self.writer.close()
