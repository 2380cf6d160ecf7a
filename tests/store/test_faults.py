"""A store that fails under jobgraph gets one clear message (which store, what to do), never a traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from jobgraph.store import Store
from jobgraph.store.faults import StoreFault
from tests.conftest import Cli, WritePipeline, sh, store_url


@pytest.mark.parametrize("damage", ["garbage", "garbage-after-the-header"])
def test_a_damaged_sqlite_file_is_named_with_what_to_do_and_nothing_runs(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline, damage: str) -> None:
    marker = tmp_path / "ran"
    write_pipeline({"jobs": [sh("a", f"touch {marker}")]})
    cli("run", "pipeline.yaml", check=0)
    marker.unlink()
    database = Path(store_url(tmp_path).removeprefix("sqlite:///"))
    Store(store_url(tmp_path)).close()  # checkpoints the WAL into the file
    size = database.stat().st_size
    keep = 0 if damage == "garbage" else 4096
    with database.open("r+b") as file:
        file.seek(keep)
        file.write(os.urandom(size - keep))

    for command in (["run", "pipeline.yaml"], ["history"], ["retry", "0"]):
        result = cli(*command, check=2)
        message = result.stderr.replace("\n", "")  # as one line, however the terminal wrapped it
        assert f"error: the store {database} is damaged (" in message, message
        assert f"mv {database} {database}.damaged" in message
        assert "Traceback" not in result.stderr + result.stdout
    assert not marker.exists()

    shutil.move(database, tmp_path / "damaged.db")
    for leftover in database.parent.glob("jobgraph.db-*"):
        leftover.unlink()
    cli("run", "pipeline.yaml", check=0)
    assert marker.exists()


def test_a_store_that_cannot_be_reached_is_named_without_its_password(tmp_path: Path, cli: Cli) -> None:
    url = "postgresql+psycopg://jobgraph:s3cret@127.0.0.1:1/jobgraph"
    result = cli("history", "--store", url, check=2)
    result.stderr = result.stderr.replace("\n", "")
    assert "error: cannot reach the store postgresql+psycopg://jobgraph:***@127.0.0.1:1/jobgraph (" in result.stderr
    assert "check that its database server is running and reachable" in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(StoreFault) as fault:
        Store(url)
    assert fault.value.transient
