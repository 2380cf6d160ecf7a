"""Factories shared by the tests: pipeline files in tmp_path, and the real `jobgraph` command."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "examples" / "seed"

WritePipeline = Callable[..., Path]
Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def write_pipeline(tmp_path: Path) -> WritePipeline:
    """Write a native pipeline (or any document) to tmp_path; shell jobs use the `sh` image by default."""

    def write(document: Any, name: str = "pipeline.yaml", with_sh: bool = True) -> Path:
        if with_sh and isinstance(document, dict):
            document = {"name": "p", "images": {"sh": ["sh", "-c"]}, **document}
        path = tmp_path / name
        if isinstance(document, str | bytes):
            path.write_bytes(document.encode() if isinstance(document, str) else document)
        elif name.endswith(".json"):
            path.write_text(json.dumps(document))
        else:
            path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return write


def sh(name: str, script: str, **fields: Any) -> dict[str, Any]:
    """A job that runs a shell script through the `sh` image."""
    return {"name": name, "image": "sh", "args": [script], **fields}


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run the real `jobgraph` command in tmp_path, with its own store and logs there."""

    def run(*args: str, check: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph"), "COLUMNS": "250"}
        env.pop("JOBGRAPH_STORE", None)
        result = subprocess.run([sys.executable, "-m", "jobgraph", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=timeout)
        if check is not None:
            assert result.returncode == check, result.stdout + result.stderr
        return result

    return run


def store_url(tmp_path: Path) -> str:
    """The store the `cli` fixture's commands write to."""
    return f"sqlite:///{tmp_path / '.jobgraph' / 'jobgraph.db'}"


PEAK_RSS_LAUNCHER = (
    "import os, sys\n"
    "pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n")


def with_peak_rss(argv: list[str], report: Path) -> list[str]:
    """`argv` run by a small launcher that writes the command's own peak memory (KiB) to `report`.

    A command spawned straight from pytest would report pytest's peak instead once pytest is the bigger:
    Linux carries the memory high-water mark of a vfork'ed child (which shares its parent's memory until
    it execs) into the child's ru_maxrss. The launcher is a small Python, so what it carries is small.
    """
    return [sys.executable, "-c", PEAK_RSS_LAUNCHER, str(report), *argv]


def peak_rss_mib(report: Path) -> float:
    """What `with_peak_rss`'s launcher wrote, in MiB."""
    return int(report.read_text()) / 1024


def only_run(url: str) -> str:
    """The id of the one run the store at `url` holds (the test fails if it holds more or none)."""
    from jobgraph.store import Store

    with Store(url) as records:
        found = records.runs()
    assert len(found) == 1
    return found[0].run_id


def process_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (an exited process nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _postgres_unavailable(reason: str) -> None:
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
        _postgres_unavailable("PostgreSQL's server is not installed")
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
        _postgres_unavailable(f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')[-500:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", f"{bin_dir}/pg_ctl -D {data} -m fast -w stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
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


def _ping() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def slurm() -> None:
    """A Slurm cluster that answers: set up (or brought back after a restart) by scripts/setup-slurm.sh."""
    if shutil.which("sbatch") and _ping():
        return
    if os.geteuid() == 0:
        subprocess.run(["bash", str(REPO / "scripts" / "setup-slurm.sh")], capture_output=True, timeout=600)
        if shutil.which("sbatch") and _ping():
            return
    message = "no Slurm cluster answers here; run `bash scripts/setup-slurm.sh` (as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"Slurm tests cannot run on CI: {message}", pytrace=False)
    pytest.skip(message)
