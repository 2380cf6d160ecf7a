"""One graph run at a time: `GraphRun(pipeline, runner_for, listeners, log_dir).run()`, in run.py.

The package itself exports only the events a run emits (events.py): the store and the live view
import them, and must not load the engine, the config models and the runners by doing so.
"""

from jobgraph.engine.events import (
    AttemptAdopted,
    AttemptEnded,
    AttemptStarted,
    AttemptSubmitted,
    Event,
    JobsExpanded,
    Listener,
    Recorder,
    RetryWaiting,
    RunEnded,
    RunStarted,
    TaskChanged,
    TaskInfo,
)

__all__ = [
    "AttemptAdopted",
    "AttemptEnded",
    "AttemptStarted",
    "AttemptSubmitted",
    "Event",
    "JobsExpanded",
    "Listener",
    "Recorder",
    "RetryWaiting",
    "RunEnded",
    "RunStarted",
    "TaskChanged",
    "TaskInfo",
]
