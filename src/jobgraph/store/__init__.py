"""Where runs are recorded: `Store(url)` on SQLite (default) or any SQLAlchemy URL."""

from jobgraph.store.records import DEFAULT_URL, AttemptRecord, RunRecord, RunSummary, TaskRecord
from jobgraph.store.store import Store

__all__ = ["DEFAULT_URL", "AttemptRecord", "RunRecord", "RunSummary", "Store", "TaskRecord"]
