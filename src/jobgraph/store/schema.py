"""Bringing a store's schema up to date: once, by one process, in one transaction, whatever runs at once.

Eight `jobgraph` processes may open a store that does not exist yet. Each reads the version first
(one query, no Alembic import when the store is current); one that finds it behind takes the
store's migration lock (SQLite: BEGIN IMMEDIATE, the database's write lock; PostgreSQL:
pg_advisory_xact_lock), reads the version again under the lock, and upgrades in the same
transaction. DDL is transactional on both backends, so an upgrade that fails half way leaves the
store as it was, and the next open simply runs it again. A new SQLite store skips the migrations:
it is made from the schema they produce (store/sqlite_schema.py), in the same locked transaction.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Engine, func, inspect, select, text

from jobgraph.store.faults import StoreFault, store_name
from jobgraph.store.sqlite_schema import SQLITE_SCHEMA_VERSION, create_schema

MIGRATION_LOCK = 0x6A6F6267
"""The PostgreSQL advisory lock key every jobgraph process takes to migrate ("jobg")."""


def schema_version(engine: Engine | Connection) -> str | None:
    """The store's migration version, or None for an empty database."""
    if isinstance(engine, Engine):
        with engine.connect() as conn:
            return schema_version(conn)
    if not inspect(engine).has_table("alembic_version"):
        return None
    version = engine.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if version is None else str(version)


def migrate(engine: Engine, to: str, url: str | None = None) -> None:
    """Bring the store's schema to `to` with Alembic (from empty, or from any earlier version), under a lock.

    A new SQLite store wanted at the newest version is made from its schema snapshot instead: the
    same tables, indexes, views and version stamp, without importing Alembic.
    """
    if schema_version(engine) == to:
        return
    with engine.connect() as conn:
        _lock(conn)
        current = schema_version(conn)
        if current == to:
            conn.rollback()
            return
        try:
            if current is None and to == SQLITE_SCHEMA_VERSION and conn.dialect.name == "sqlite":
                create_schema(conn.exec_driver_sql)
            else:
                _upgrade(conn, to)
        except _CommandError as exc:
            conn.rollback()
            raise StoreFault(f"cannot upgrade the store {store_name(url or str(engine.url))} from version "
                             f"{current} to {to} ({exc}): it was probably written by a newer jobgraph; use that "
                             "one, or another store", transient=False) from None
        except Exception as exc:
            conn.rollback()
            if isinstance(exc, StoreFault) and exc.transient:
                raise
            cause = getattr(exc, "orig", None) or exc
            detail = exc.detail if isinstance(exc, StoreFault) else (
                str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise StoreFault(f"cannot upgrade the store {store_name(url or str(engine.url))} from version "
                             f"{current} to {to}: {detail}; nothing was changed, and the next jobgraph command "
                             "tries again", transient=False) from None
        conn.commit()


class _CommandError(Exception):
    """Alembic cannot find the way from the store's version to the one wanted (a newer jobgraph's store)."""


def _upgrade(conn: Connection, to: str) -> None:
    """Run the migrations from the connection's version to `to` in its transaction (Alembic is imported only here)."""
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = conn
    try:
        command.upgrade(config, to)
    except CommandError as exc:
        raise _CommandError(str(exc)) from None


def _lock(conn: Connection) -> None:
    """Begin the migration's transaction holding the store's migration lock (waits for another migrator)."""
    if conn.dialect.name == "sqlite":
        # pysqlite begins no transaction before DDL by itself; BEGIN IMMEDIATE both begins one and takes the
        # write lock (waiting up to busy_timeout), so the DDL that follows is one atomic, exclusive change.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
