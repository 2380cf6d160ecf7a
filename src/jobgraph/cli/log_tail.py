"""The last line a running job printed, for the live views (`run`'s table, `show --watch`).

Read at a redraw, never per event: the last TAIL_BYTES of the log at most, through the one safe
opener (runners/output.open_regular: never a link, a FIFO or a device a job planted in its place).
The log is written redacted, so it holds no secret; what a job prints to steer a terminal (colours,
cursor moves, carriage returns of a progress bar) is taken out, so it can only ever be text in a cell.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from jobgraph.runners.output import as_text, open_regular

TAIL_BYTES = 4096
"""The most read of a log per redraw: a line longer than this shows as its end."""

_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
"""Terminal escape sequences: CSI (colours, cursor moves), OSC (titles, links) and the two-byte ones."""
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Control characters left once the sequences are gone (a tab stays, as a space)."""


def last_line(path: Path | str, max_bytes: int = TAIL_BYTES) -> str:
    """The last non-blank line of a log (after a progress bar's last carriage return), clean of terminal
    controls; "" if there is none yet, or the file is missing or not a regular file."""
    try:
        fd = open_regular(Path(path))
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        data = os.pread(fd, min(size, max_bytes), start)
    except OSError:
        return ""
    finally:
        os.close(fd)
    text = as_text(data)
    for line in reversed(text.splitlines()):  # splits at carriage returns too: a progress bar's latest state
        line = _CONTROLS.sub("", _ESCAPES.sub("", line)).replace("\t", " ").strip()
        if line:
            return line
    return ""
