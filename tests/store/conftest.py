"""Stores to test against: SQLite in tmp_path, and a real PostgreSQL server started for the session.

On CI (CI=true) a PostgreSQL server that cannot be installed or started fails the suite with the
reason; elsewhere those tests skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text


def _unavailable(reason: str) -> None:
    message = f"{reason}; run `bash scripts/setup-postgres.sh`"
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run on CI: {message}", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(command: str) -> None:
    subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields its admin URL."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        _unavailable("PostgreSQL's server is not installed")
    bin_dir = Path(binaries[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="jobgraph-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    data = folder / "data"
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    try:
        _as_postgres(f"{bin_dir}/initdb -D {data} -U postgres --auth=trust -E UTF8 --no-sync >/dev/null")
        _as_postgres(f"{bin_dir}/pg_ctl -D {data} -l {folder}/server.log -w -o '{options}' start >/dev/null")
    except subprocess.CalledProcessError as exc:
        _unavailable(f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')[-500:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", f"{bin_dir}/pg_ctl -D {data} -m fast -w stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: str = request.getfixturevalue("postgres_server")
    name = f"t_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server}/{name}"
