"""Where jobgraph keeps its things: its folder (the default store, the logs) and the store's URL."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """jobgraph's folder for the default store and the logs: `.jobgraph` here, or JOBGRAPH_HOME."""
    return Path(os.environ.get("JOBGRAPH_HOME", ".jobgraph"))


def store_url(option: str | None) -> str:
    """The --store URL, else the SQLite file in jobgraph's folder."""
    return option or f"sqlite:///{home() / 'jobgraph.db'}"
