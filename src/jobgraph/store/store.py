"""The record of every run, job and attempt: written at each engine event, read by the CLI.

`Store(url)` is the one interface over two ways of reaching a store. On a SQLite file, what
`jobgraph run` does (open or create the store, record every event, find lost runs, read the closing
summary) goes through the standard library's sqlite3 (store/sqlite_records.py), because importing
SQLAlchemy alone would cost the run about 0.2 s. Everything else goes through SQLAlchemy
(store/sql_records.py), imported and connected the first time it is needed: PostgreSQL, `history`,
`show` and the views, migrating an older store, retries and closing lost runs. Either way a Store
is an engine listener (`store(event)`), so the engine never imports a database library.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from jobgraph.engine.events import Event
from jobgraph.owner import owner_label
from jobgraph.store.records import (
    DEFAULT_URL,
    AttemptRecord,
    NotificationRecord,
    RunRecord,
    RunSummary,
    TaskRecord,
)
from jobgraph.store.sqlite_records import SqliteRecords, sqlite_file

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from jobgraph.store.sql_records import SqlStore


class Store:
    """A jobgraph store on SQLite (WAL; the default) or any SQLAlchemy URL.

    Each run has one writer, named in its `owner` column (see store/ownership.py): the process that
    started it, or the one that claimed it to retry it, or took it over to close it.
    """

    essential = True
    """The engine cancels a run whose store listener fails: nothing runs unrecorded."""

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self.url = url
        self._owner = owner_label()
        self._sql: SqlStore | None = None
        path = sqlite_file(url)
        self._sqlite = None if path is None else SqliteRecords(path, self._owner)
        if self._sqlite is None or not self._sqlite.current:
            try:
                self._full()  # another backend, or a SQLite store to migrate: it is opened (and migrated) now
            except BaseException:
                self.close()
                raise

    @property
    def owner(self) -> str:
        """This process, as every run it writes records it."""
        return self._owner

    @owner.setter
    def owner(self, owner: str) -> None:
        self._owner = owner
        for writer in (self._sqlite, self._sql):
            if writer is not None:
                writer.owner = owner

    def _full(self) -> SqlStore:
        """The store through SQLAlchemy, imported and connected on first use."""
        if self._sql is None:
            from jobgraph.store.sql_records import SqlStore

            self._sql = SqlStore(self.url, self._owner)
        return self._sql

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for readers beside the store's own (deployments, the web's queries, tests): its pool
        gives each thread its own connection, where the run path's stdlib SQLite connection belongs to one thread."""
        return self._full()._engine

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection."""
        if self._sqlite is not None:
            self._sqlite.close()
        if self._sql is not None:
            self._sql.close()

    def __call__(self, event: Event) -> None:
        """Record one engine event: a Store is an engine listener."""
        self.record_all((event,))

    def record(self, event: Event) -> None:
        """Record one engine event, in its own transaction (see `record_all`)."""
        self.record_all((event,))

    def record_all(self, events: Sequence[Event]) -> None:
        """Record engine events, in order, in one transaction (store/writer.py); on failure, nothing of them."""
        (self._sqlite or self._full()).record_all(events)

    def record_notification(self, record: NotificationRecord) -> None:
        """Record how one notification of a run ended (app/notify.py), in its own transaction."""
        (self._sqlite or self._full()).record_notification(record)

    def notifications(self, run_id: str) -> list[NotificationRecord]:
        """Every notification a run sent or failed to send, oldest first (`show`)."""
        return self._full().notifications(run_id)

    def running_runs(self) -> list[RunRecord]:
        """Runs recorded as RUNNING: live ones, and any whose orchestrator died."""
        return (self._sqlite or self._full()).running_runs()

    def request_cancel(self, run_id: str, by: str) -> RunRecord:
        """Record that `by` asks the run's owner to cancel it, if it runs; StoreError says how it ended if not
        (store/cancel_requests.py)."""
        return self._full().request_cancel(run_id, by)

    def cancel_requests(self, run_ids: Collection[str]) -> dict[str, str]:
        """Of these runs, those still RUNNING whose cancel someone asked for, with who asked: the owner's poll."""
        if not run_ids:
            return {}
        return (self._sqlite or self._full()).cancel_requests(run_ids)

    def tasks(self, run_id: str) -> list[TaskRecord]:
        """Every job of a run as it stands now (its row of the latest graph run attempt that ran it), by name."""
        return (self._sqlite or self._full()).tasks(run_id)

    def runs(self, limit: int = 20, pipeline: str | None = None) -> list[RunSummary]:
        """The newest runs first, with their jobs counted by state: two queries, no pipeline snapshot."""
        return self._full().runs(limit, pipeline)

    def run(self, run_id: str) -> RunRecord:
        """One run, by its id or a unique prefix of it (as git takes short hashes)."""
        return self._full().run(run_id)

    def attempts(self, run_id: str, task: str | None = None) -> list[AttemptRecord]:
        """Every attempt of a run (or of one of its jobs), oldest first."""
        return self._full().attempts(run_id, task)

    def view(self, name: str, limit: int = 10) -> tuple[list[str], list[Sequence[Any]]]:
        """Rows of one of the views in the store, newest first, as the quickstart queries them."""
        return self._full().view(name, limit)

    def claim_run(self, seen: RunRecord) -> RunRecord:
        """Make this process the one writer of a finished run's next attempt, or raise RunBusy (ownership.py)."""
        return self._full().claim_run(seen)

    def release_claim(self, claimed: RunRecord, previous: RunRecord) -> bool:
        """Give back a claimed run as it was, if its new attempt recorded nothing (ownership.py)."""
        return self._full().release_claim(claimed, previous)

    def take_over(self, lost: RunRecord) -> bool:
        """Become the owner of a RUNNING run whose owner died, to close it (ownership.py)."""
        return self._full().take_over(lost)

    def mark_lost(self, run_id: str, reason: str, keep: Collection[tuple[str, int]] = ()) -> bool:
        """Close the records of a run whose orchestrator died (ownership.py)."""
        return self._full().mark_lost(run_id, reason, keep)

    def settled_tasks(self, run_id: str) -> list[TaskRecord]:
        """Every job of a run as a retry sees it (ownership.py)."""
        return self._full().settled_tasks(run_id)
