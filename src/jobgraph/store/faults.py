"""What a failure of the store itself means to a user: one message naming the store and what to do.

A full disk, a damaged SQLite file, a PostgreSQL server that is down or restarting, a lock held too
long: SQLAlchemy raises each as a DBAPI error from whichever statement met it. `watch(engine, url)`
hooks the engine's `handle_error` event, so every such failure, in any module that uses the store,
reaches the caller as a `StoreFault` that names the store, says what to do, and says whether waiting
may cure it (`transient`, which the run recorder uses to retry); store/sqlite_records.py passes
sqlite3's errors through `fault_of` alike. Errors that belong to the caller (a unique key already
taken, a bug in a statement) pass through unchanged; `conflict` tells a refused record. SQLAlchemy is
imported only where an engine is watched: a run on SQLite never imports it.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import TYPE_CHECKING, Any

from jobgraph.errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import ExceptionContext

_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26
_PG_DISK_FULL = "53100"


class StoreFault(StoreError):
    """The store failed under jobgraph; the message says which store and what to do."""

    def __init__(self, message: str, transient: bool, detail: str = "") -> None:
        super().__init__(message)
        self.transient = transient
        """True when waiting may cure it (a restart, a lock, a full disk someone frees)."""
        self.detail = detail or message
        """The database's own words for it."""


def store_name(url: str) -> str:
    """The store as a user knows it: the SQLite file, or the URL without its password."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def watch(engine: Engine, url: str) -> None:
    """Turn every failure of the database under `engine` into a StoreFault about `url`."""
    from sqlalchemy import event
    from sqlalchemy.exc import InterfaceError, OperationalError

    name = store_name(url)

    def translate(context: ExceptionContext) -> None:
        if context.is_pre_ping:
            return  # the pool is only testing a connection; it reconnects by itself
        fault = fault_of(context.original_exception, name, context.is_disconnect,
                         isinstance(context.sqlalchemy_exception, OperationalError | InterfaceError))
        if fault is not None:
            raise fault

    event.listen(engine, "handle_error", translate)


def conflict(error: BaseException) -> str | None:
    """The database's words, if `error` is a record the store refused (a key already taken); else None."""
    refused: BaseException | None = error if isinstance(error, sqlite3.IntegrityError) else None
    if refused is None and "sqlalchemy" in sys.modules:  # SQLAlchemy's errors come only from where it is loaded
        from sqlalchemy.exc import IntegrityError

        refused = error.orig if isinstance(error, IntegrityError) else None
    return None if refused is None else (str(refused).strip().splitlines() or ["a conflict"])[0]


def fault_of(error: BaseException, name: str, disconnected: bool = False,
             operational: bool = False) -> StoreFault | None:
    """The StoreFault for a DBAPI error, or None when the error is the caller's business."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    fault = _fault(error, name, first_line, disconnected or operational)
    if fault is not None:
        fault.detail = first_line
    return fault


def _fault(error: BaseException, name: str, first_line: str, unreachable: bool) -> StoreFault | None:
    if isinstance(error, sqlite3.Error):
        return _sqlite_fault(error, name, first_line)
    if getattr(error, "sqlstate", None) == _PG_DISK_FULL:
        return StoreFault(f"the database server of the store {name} is out of disk space ({first_line}): "
                          "free some space on it", transient=True)
    if unreachable:
        return StoreFault(f"cannot reach the store {name} ({first_line}): check that its database server is "
                          "running and reachable", transient=True)
    return None


def _sqlite_fault(error: sqlite3.Error, path: str, detail: str) -> StoreFault | None:
    if type(error) not in (sqlite3.OperationalError, sqlite3.DatabaseError):
        return None  # IntegrityError and the like: the caller's business
    code: Any = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_FULL:
        return StoreFault(f"the disk holding the store {path} is full ({detail}): free some space there",
                          transient=True)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in detail or "not a database" in detail:
        return StoreFault(f"the store {path} is damaged ({detail}): move it aside (mv {path} {path}.damaged) and "
                          f"jobgraph starts a new, empty store there; `sqlite3 {path}.damaged .recover` may save "
                          "what it still holds", transient=False)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreFault(f"the store {path} stayed locked by another process ({detail}): try again once it is "
                          "done", transient=True)
    if primary == _SQLITE_IOERR:
        return StoreFault(f"cannot read or write the store {path} ({detail}): check the disk it is on",
                          transient=True)
    if primary in (_SQLITE_CANTOPEN, _SQLITE_READONLY):
        return StoreFault(f"cannot write the store {path} ({detail}): check that its folder exists and that "
                          "jobgraph may write there", transient=False)
    return StoreFault(f"the store {path} failed ({detail})", transient=False)
