"""Wake-ups between processes that share a store: a change another process commits wakes the one listening.

`jobgraph serve` sleeps until its next fire time; a `trigger`, `deploy` or `resume` from another process
must wake it at once rather than at its next poll. PostgreSQL carries the wake-up itself: a writer
NOTIFYs in the very transaction that changes the deployment (delivered only if it commits), and the
service LISTENs on a connection of its own. SQLite has nothing of the kind, so the service opens a FIFO
beside the store file (`<store>-wake`, like SQLite's own `-wal` and `-shm`) and a writer, after its
commit, writes one byte into it.

A wake-up only says "read the store again": it carries no data, and a lost one costs a poll interval,
never a fire. So everything here is best-effort for the writer and refused, not worked around, when
unsafe: the FIFO is opened by a handle that never follows a link (O_PATH | O_NOFOLLOW), checked to be
a FIFO owned by this user or the store file's owner, and only then opened for reading or writing
through that handle, so a link, regular file or device planted at that name is never opened. A FIFO
left by a dead service is harmless (its buffer died with it) and is reused. Linux only; elsewhere
`listen` reports wake-ups unavailable and the service polls.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, func, select

from jobgraph.errors import StoreError

CHANNEL = "jobgraph_wake"
"""The PostgreSQL notification channel (one per database, so one per store)."""


class WakeupUnavailable(StoreError):
    """This store cannot wake a listener: the reason says why; the service polls instead."""


class Listener(Protocol):
    """The listening end: its file descriptor turns readable when another process wakes it."""

    def fileno(self) -> int:
        """The descriptor to watch (an event loop's add_reader)."""

    def drain(self) -> None:
        """Consume what woke it; raises WakeupUnavailable if the channel broke (close it then)."""

    def close(self) -> None:
        """Stop listening."""


def notify(conn: Connection) -> None:
    """Inside a writing transaction: wake the listeners when it commits (PostgreSQL; SQLite uses `poke`)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_notify(CHANNEL, "")))


def poke(engine: Engine) -> None:
    """After a commit: wake the listener of a SQLite store, if one listens. Never fails, never blocks."""
    path = _fifo_path(engine)
    if path is None:
        return
    with contextlib.suppress(OSError, WakeupUnavailable):
        handle = _checked_fifo(path, _store_owner(engine))
        try:
            fifo = os.open(f"/proc/self/fd/{handle}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        finally:
            os.close(handle)
        try:
            os.write(fifo, b"\0")  # a full FIFO (EAGAIN) already holds a wake-up
        finally:
            os.close(fifo)


def listen(engine: Engine) -> Listener:
    """Start listening for wake-ups of this store; WakeupUnavailable says why it cannot."""
    if engine.dialect.name == "postgresql":
        return _PostgresListener(engine)
    path = _fifo_path(engine)
    if path is None:
        raise WakeupUnavailable("an in-memory store has no file to put a wake-up FIFO beside")
    return _FifoListener(path, _store_owner(engine))


class _FifoListener:
    """The reading end of `<store>-wake`, opened read-write so it never reads end-of-file between writers."""

    def __init__(self, path: Path, store_owner: int | None) -> None:
        if not hasattr(os, "O_PATH"):
            raise WakeupUnavailable("wake-up FIFOs need Linux (O_PATH)")
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            pass  # a service's FIFO from before (checked below), or something planted (refused below)
        except OSError as exc:
            raise WakeupUnavailable(f"cannot create {path}: {exc.strerror}") from None
        handle = _checked_fifo(path, store_owner)
        try:
            self._fd = os.open(f"/proc/self/fd/{handle}", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            with contextlib.suppress(OSError):  # whoever may write the store may wake its service
                if os.fstat(self._fd).st_uid == os.geteuid() and store_owner is not None:
                    os.fchmod(self._fd, _store_mode(path) & 0o666 | 0o600)
        except OSError as exc:
            raise WakeupUnavailable(f"cannot open {path}: {exc.strerror}") from None
        finally:
            os.close(handle)

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> None:
        try:
            while os.read(self._fd, 4096):
                pass
        except BlockingIOError:
            return
        except OSError as exc:
            raise WakeupUnavailable(f"the wake-up FIFO failed: {exc.strerror}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class _PostgresListener:
    """A connection of its own, out of the pool, that LISTENs on CHANNEL."""

    def __init__(self, engine: Engine) -> None:
        try:
            raw = engine.raw_connection()
            connection: Any = raw.driver_connection
            raw.detach()  # never returned to the pool: it stays in LISTEN mode for the service's life
            self._connection = connection
            connection.autocommit = True
            connection.execute("LISTEN jobgraph_wake")  # CHANNEL, written out: nothing is interpolated
        except Exception as exc:  # any failure only means: poll instead
            raise WakeupUnavailable(f"cannot LISTEN on the store: {exc}") from None

    def fileno(self) -> int:
        return int(self._connection.fileno())

    def drain(self) -> None:
        pgconn = self._connection.pgconn
        try:
            pgconn.consume_input()
            while pgconn.notifies() is not None:
                pass
        except Exception as exc:  # a server restart, a dropped connection
            raise WakeupUnavailable(f"the LISTEN connection to the store broke: {exc}") from None
        if pgconn.status != 0:  # CONNECTION_OK
            raise WakeupUnavailable("the LISTEN connection to the store was closed")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()


def _fifo_path(engine: Engine) -> Path | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).absolute().with_name(Path(database).name + "-wake")


def _store_owner(engine: Engine) -> int | None:
    """The owner of the SQLite store file, if it exists."""
    path = _fifo_path(engine)
    try:
        return None if path is None else os.stat(path.with_name(path.name.removesuffix("-wake"))).st_uid
    except OSError:
        return None


def _store_mode(fifo: Path) -> int:
    return os.stat(fifo.with_name(fifo.name.removesuffix("-wake"))).st_mode


def _checked_fifo(path: Path, store_owner: int | None) -> int:
    """An O_PATH handle on `path`, which is a FIFO owned by this user or the store's owner (never a link)."""
    try:
        handle = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)  # a link: a handle on the link itself
    except OSError as exc:
        raise WakeupUnavailable(f"cannot open {path}: {exc.strerror}") from None
    info = os.fstat(handle)
    if stat.S_ISFIFO(info.st_mode) and info.st_uid in {os.geteuid(), store_owner}:
        return handle
    os.close(handle)
    what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else \
        "a FIFO owned by someone else" if stat.S_ISFIFO(info.st_mode) else "not a FIFO"
    raise WakeupUnavailable(f"{path} is {what}, not jobgraph's wake-up FIFO: it is left alone, not followed")
