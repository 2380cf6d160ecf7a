"""Whether a failed attempt is retried: `retries`, `retry_on`, `no_retry_on` and `retry_for`.

Argo's `retryStrategy` (a `limit`, an `expression` over the exit code and `lastRetry.status`, and
`backoff.maxDuration`) and Snowflake's TASK_AUTO_RETRY_ATTEMPTS are the anchors: a job retries any
failure up to `retries` times unless `retry_on` narrows that to named failures, `no_retry_on` rules
some out (it wins), and `retry_for` stops retrying once the job has spent that long since its first
attempt began. When no retry is made, `refusal` says why, in words the job's error carries.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobgraph.config.model import Job
from jobgraph.runners.base import Cause, Outcome
from jobgraph.states import AttemptStatus


def matches(condition: int | str, outcome: Outcome) -> bool:
    """Whether one `retry_on` / `no_retry_on` entry names how this attempt ended.

    An exit code matches a FAILED attempt that exited with it; `timeout` a TIMEOUT; `oom` an attempt
    killed for its memory; `lost` one whose node was lost or pod evicted; `error` an ERROR attempt
    (the runner could not start or follow it) that was not lost.
    """
    if isinstance(condition, int):
        return outcome.status == AttemptStatus.FAILED and outcome.exit_code == condition
    if condition == "timeout":
        return outcome.status == AttemptStatus.TIMEOUT
    if condition == "oom":
        return outcome.cause == Cause.OOM
    if condition == "lost":
        return outcome.cause == Cause.LOST
    if condition == "error":
        return outcome.status == AttemptStatus.ERROR and outcome.cause != Cause.LOST
    return False


def describe(outcome: Outcome) -> str:
    """How an attempt ended, in the terms `retry_on` uses: `exit code 3`, `oom (exit code 137)`, `timeout`."""
    if outcome.cause is not None:
        what = str(outcome.cause)
    elif outcome.status == AttemptStatus.TIMEOUT:
        return "timeout"
    elif outcome.status == AttemptStatus.ERROR:
        what = "error"
    else:
        what = ""
    code = f"exit code {outcome.exit_code}" if outcome.exit_code is not None else ""
    if what and code:
        return f"{what} ({code})"
    return what or code or str(outcome.status).lower()


def _listed(conditions: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(c) for c in conditions) + "]"


def refusal(job: Job, outcome: Outcome, attempts_left: int, spent: float, delay: float) -> str | None:
    """None if the job should be retried after `outcome`; otherwise why not, for the job's error.

    `attempts_left` is how many attempts `retries` still allows; `spent` the seconds since the job's
    first attempt (of this run attempt) began; `delay` the wait before the next attempt would start.
    """
    if outcome.status == AttemptStatus.DONE:
        return "it succeeded"
    if attempts_left <= 0:
        return "no retries left"
    how = describe(outcome)
    refused = [c for c in job.no_retry_on or () if matches(c, outcome)]
    if refused:
        return f"{how} is in no_retry_on {_listed(job.no_retry_on or ())}"
    if job.retry_on is not None and not any(matches(c, outcome) for c in job.retry_on):
        return f"{how} is not in retry_on {_listed(job.retry_on)}"
    if job.retry_for is not None and spent + delay > job.retry_for:
        return (f"retry_for {job.retry_for:g}s would be passed ({spent:.1f}s spent"
                + (f", {delay:g}s delay" if delay else "") + ")")
    return None
