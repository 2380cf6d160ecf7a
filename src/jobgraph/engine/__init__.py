"""One graph run at a time: `GraphRun(pipeline, runner_for, listeners, log_dir).run()`."""

from jobgraph.engine.events import (
    AttemptEnded,
    AttemptStarted,
    Event,
    Listener,
    RunEnded,
    RunStarted,
    TaskChanged,
    TaskInfo,
)
from jobgraph.engine.run import GraphRun, PriorTask, RunResult

__all__ = [
    "AttemptEnded",
    "AttemptStarted",
    "Event",
    "GraphRun",
    "Listener",
    "PriorTask",
    "RunEnded",
    "RunResult",
    "RunStarted",
    "TaskChanged",
    "TaskInfo",
]
