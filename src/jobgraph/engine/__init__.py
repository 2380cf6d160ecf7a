"""One graph run at a time: `GraphRun(pipeline, runner_for, listeners, log_dir).run()`."""

from jobgraph.engine.events import (
    AttemptAdopted,
    AttemptEnded,
    AttemptStarted,
    AttemptSubmitted,
    Event,
    Listener,
    Recorder,
    RetryWaiting,
    RunEnded,
    RunStarted,
    TaskChanged,
    TaskInfo,
)
from jobgraph.engine.run import Adoption, GraphRun, PriorTask, RunResult

__all__ = [
    "Adoption",
    "AttemptAdopted",
    "AttemptEnded",
    "AttemptStarted",
    "AttemptSubmitted",
    "Event",
    "GraphRun",
    "Listener",
    "PriorTask",
    "Recorder",
    "RetryWaiting",
    "RunEnded",
    "RunResult",
    "RunStarted",
    "TaskChanged",
    "TaskInfo",
]
