"""`jobgraph init`: a commented starter pipeline that validates and runs as written, in a new file only.

The starter uses only host commands (`command:`, Python's own `-c`), so it runs on any machine jobgraph
runs on: no image to build, no engine to start. A test validates and runs it exactly as written.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from jobgraph.cli.common import console, reported
from jobgraph.errors import JobgraphError

STARTER = """\
# A jobgraph pipeline: jobs run as a DAG, each after the jobs in its `after` list.
# Check it:   jobgraph validate {file}
# See it:     jobgraph graph {file}
# Run it:     jobgraph run {file} --param day=2024-01-31
# Then:       jobgraph history, jobgraph show RUN_ID, jobgraph logs RUN_ID JOB
# Every field: `jobgraph schema` prints the JSON Schema of this file.

name: starter

# Run parameters: {{{{ params.NAME }}}} in a job's command, args or env; `--param NAME=VALUE` on
# run, trigger and deploy sets one. Each run records the values it ran with (`jobgraph show`
# prints them), so a param must never carry a secret: give those with a job's `secrets:` list.
# Types: string, integer, number, boolean, date (2024-01-31), list.
params:
  - name: day
    type: date
    default: "2024-01-01"
    description: the day this run processes
  - name: regions
    type: list
    default: [eu, us]
    description: where to extract from

# schedule: "59 MINUTE"        # or "USING CRON 0 * * * * UTC", or "*/5 * * * *"; `jobgraph deploy` + `serve`

# Pools cap how many jobs run at once in them; a job without `pool` uses `default`.
pools:
  small: {{max_parallel: 2}}

defaults:
  retries: 1                    # one more attempt after a failure
  timeout: 5m

jobs:
  # `command:` is a host command as a list: no shell, so nothing in a value is ever interpreted.
  # `python` means the Python that runs jobgraph.
  - name: extract
    pool: small
    command: [python, -c, "import sys; print('extracting', sys.argv[1], 'for', sys.argv[2])"]
    args: ["{{{{ params.day }}}}", "{{{{ params.regions }}}}"]

  - name: check
    pool: small
    command: [python, -c, "import os; print('checking run', os.environ['RUN'])"]
    env:
      RUN: "{{{{ run_id }}}}"     # also: scheduled_time, pipeline, job, attempt

  - name: load
    after: [extract, check]
    # A job's return value: whatever it writes to $JOBGRAPH_RETURN_VALUE_FILE (shown by `show`).
    command:
      - python
      - -c
      - "import os, pathlib; pathlib.Path(os.environ['JOBGRAPH_RETURN_VALUE_FILE']).write_text('loaded')"

# Container jobs take `image:` instead of `command:` (run with --runner podman), e.g.
#  - name: report
#    image: localhost/jobgraph-sql-job:latest
#    args: ["--query=select 1 as one", "--result_table=report"]
#    after: [load]
"""


def starter_text(file: Path) -> str:
    """The starter pipeline, its comments naming `file` as a shell would take it (`'my etl.yaml'`)."""
    return STARTER.format(file=shlex.quote(str(file)))


@reported
def init(file: Path) -> None:
    """Write the starter to `file`, which must not exist yet (nor be a link): nothing is ever overwritten. A name
    with a control character is refused: a line break in it would end a comment and put the rest into the YAML."""
    if any(ord(char) < 32 or ord(char) == 127 for char in str(file)):
        raise JobgraphError(f"{str(file)!r} holds a control character (a line break, a tab, ...): choose a plain "
                            "file name; nothing was written")
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise JobgraphError(f"{file} already exists: nothing was written (choose another name, e.g. "
                            "`jobgraph init my-pipeline.yaml`)") from None
    except OSError as exc:
        raise JobgraphError(f"cannot create {file}: {exc.strerror or exc}; nothing was written") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(starter_text(file))
    console.print(f"wrote {file}: a starter pipeline of 3 jobs. Next: jobgraph run {shlex.quote(str(file))}",
                  markup=False)
