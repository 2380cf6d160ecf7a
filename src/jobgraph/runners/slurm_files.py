"""What a Slurm attempt leaves in its folder on the shared filesystem: the exit code its batch script
writes as its last act, and its output, copied to the attempt's log and then removed.

Kept apart from the runner (slurm.py), which talks to Slurm's commands: these functions only touch files,
each read bounded and never through a link a job could have planted.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

from jobgraph.runners.base import JobSpec
from jobgraph.runners.output import LogWriter, open_regular, read_bounded
from jobgraph.runners.redaction import redactor_for
from jobgraph.runners.slurm_batch import EXIT_CODE_FILE, OUTPUT_FILE, RETURN_VALUE_FILE


def read_exit_code(folder: Path, job_id: str) -> tuple[int | None, datetime | None]:
    """The exit code the batch script wrote, if that file is there and was written by this very job, and
    when it was written: the job's real end, even if it ended while no jobgraph watched it."""
    try:
        data = read_bounded(folder / EXIT_CODE_FILE, 64)
        written = datetime.fromtimestamp(os.lstat(folder / EXIT_CODE_FILE).st_mtime, UTC)
    except OSError:  # none written, or not a regular file
        return None, None
    parts = data.decode(errors="replace").split()
    if len(parts) == 2 and parts[0] == job_id and parts[1].isdigit():
        return int(parts[1]), written
    return None, None


def make_private(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)


def prepare_attempt_folder(folder: Path) -> None:
    """Make the attempt's folder and clear what an earlier submission of the same attempt left there."""
    make_private(folder)
    for name in (OUTPUT_FILE, EXIT_CODE_FILE, RETURN_VALUE_FILE):
        (folder / name).unlink(missing_ok=True)


def save_log(folder: Path, spec: JobSpec) -> None:
    """Copy the output to the attempt's log path (where `jobgraph logs` reads), redacted and capped as
    every runner's logs are; the shared copy is then removed: it may hold a secret on a filesystem others
    can read, and it is not capped."""
    source = folder / OUTPUT_FILE
    try:
        fd = open_regular(source)
    except OSError:
        return
    writer = LogWriter(spec.log_path, redactor_for(spec.secret_values), spec.log_limit)
    try:
        while chunk := os.read(fd, 1 << 20):
            writer.write(chunk)
    finally:
        writer.close()
        os.close(fd)
    with contextlib.suppress(OSError):  # the log holds it now, redacted and capped: no uncapped copy stays
        source.unlink()
