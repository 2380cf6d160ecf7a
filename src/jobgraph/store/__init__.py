"""Where runs are recorded: `Store(url)` on SQLite (default) or any SQLAlchemy URL."""

from jobgraph.store.store import DEFAULT_URL, AttemptRecord, RunRecord, RunSummary, Store, TaskRecord

__all__ = ["DEFAULT_URL", "AttemptRecord", "RunRecord", "RunSummary", "Store", "TaskRecord"]
