"""`jobgraph logs` as a user meets it: any size of log, streamed, and a reader that leaves early."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from jobgraph.store import Store
from tests.conftest import Cli, WritePipeline, sh, store_url

LOG_BYTES = 1 << 30


def test_logs_of_a_1_gb_log_streams_in_flat_memory(tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    cli("run", str(write_pipeline({"jobs": [sh("talks", "echo first line")]})), check=0)
    store = Store(store_url(tmp_path))
    run_id = store.runs(1)[0].run_id
    log = store.attempts(run_id, "talks")[0].log_path
    with log.open("ab") as file:  # sparse: a gigabyte of NULs that costs no disk
        file.truncate(LOG_BYTES)
        file.seek(0, os.SEEK_END)
        file.write(b"last line\n")
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    process = subprocess.Popen([sys.executable, "-m", "jobgraph", "logs", run_id, "talks"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    received, start, end = 0, b"", b""
    while chunk := process.stdout.read(1 << 20):
        start = start or chunk[:200]
        received += len(chunk)
        end = (end + chunk)[-100:]
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    header = b"# talks attempt 1: DONE (" + str(log).encode() + b")\n"
    assert start.startswith(header + b"first line\n\x00")
    assert end.endswith(b"\x00last line\n") and received == len(header) + LOG_BYTES + len(b"last line\n")
    assert usage.ru_maxrss / 1024 < 150, f"jobgraph logs peaked at {usage.ru_maxrss / 1024:.0f} MiB"


def test_logs_read_by_a_reader_that_leaves_early_ends_quietly(
        tmp_path: Path, cli: Cli, write_pipeline: WritePipeline) -> None:
    cli("run", str(write_pipeline({"jobs": [sh("talks", "seq 1 2000000")]})), check=0)
    run_id = Store(store_url(tmp_path)).runs(1)[0].run_id
    env = {**os.environ, "JOBGRAPH_HOME": str(tmp_path / ".jobgraph")}
    started = time.monotonic()
    result = subprocess.run(f"{sys.executable} -m jobgraph logs {run_id} talks | head -2", shell=True, cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert result.stdout.splitlines()[1] == "1" and result.stderr == ""
