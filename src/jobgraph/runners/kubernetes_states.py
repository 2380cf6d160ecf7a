"""What Kubernetes says about an attempt's Job and pod, and how that becomes the attempt's Outcome.

Plain dicts in, as the API serves them (no client's models), so the state machine is the same whichever
client fetched them and can be read beside the Kubernetes documentation:

- the end comes from the Job's conditions (`Complete`, or `Failed` with a reason: `DeadlineExceeded`
  once `activeDeadlineSeconds` passed, `BackoffLimitExceeded` once its one pod failed);
- why a pod failed comes from the pod: `status.reason: Evicted` (the node ran short), and the `main`
  container's `state.terminated` (exit code, `reason: OOMKilled`, the termination message that carries
  the return value);
- a pod that cannot start (its image cannot be pulled, or no node can take it) shows nothing on the Job:
  `stuck_reason` reads it from the pod's container `state.waiting` or its `PodScheduled` condition, and
  the runner gives up on it after the settings' pending limit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jobgraph.runners.base import Cause, Outcome
from jobgraph.runners.kubernetes_manifest import CONTAINER
from jobgraph.states import AttemptStatus

LOST_REASONS = {"Evicted": "evicted from its node", "NodeLost": "lost with its node",
                "Preempting": "preempted", "Shutdown": "stopped by its node's shutdown",
                "Terminated": "stopped by its node's shutdown"}
"""A pod's `status.reason` when its node, not the job, ended it: `lost` in retry_on."""

STUCK_WAITING = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
    "CreateContainerError",
})
"""Container waiting reasons that do not pass by themselves: a wrong image or registry credentials, a
missing Secret or key (CreateContainerConfigError); reported as ERROR once the pending limit passed."""


def condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The Job's condition of type `kind` (Complete, Failed...) when it is true, else None."""
    for entry in (job.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind and entry.get("status") == "True":
            return dict(entry)
    return None


def is_finished(job: dict[str, Any]) -> bool:
    """True once the Job ended, one way or the other."""
    return condition(job, "Complete") is not None or condition(job, "Failed") is not None


def main_container(pod: dict[str, Any] | None) -> dict[str, Any]:
    """The status of the pod's `main` container, {} when there is none yet."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return dict(status)
    return {}


def terminated(pod: dict[str, Any] | None) -> dict[str, Any]:
    """How the `main` container ended ({} while it has not): exitCode, reason, message, finishedAt."""
    return dict((main_container(pod).get("state") or {}).get("terminated") or {})


def latest_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Job's newest pod (with backoffLimit 0 there is one; a pod replaced after a disruption, more)."""
    newest: dict[str, Any] | None = None
    for pod in pods:  # the last of equals wins: lists and events come oldest first
        stamp = pod.get("metadata", {}).get("creationTimestamp") or ""
        if newest is None or stamp >= (newest.get("metadata", {}).get("creationTimestamp") or ""):
            newest = pod
    return newest


def stuck_reason(pod: dict[str, Any] | None) -> str | None:
    """Why the pod cannot start, in Kubernetes' words, or None if it is not stuck (or ended)."""
    if pod is None:
        return None
    waiting = (main_container(pod).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in STUCK_WAITING:
        return f"{waiting['reason']}: {waiting.get('message') or 'no message'}"
    for entry in (pod.get("status") or {}).get("conditions") or []:
        if entry.get("type") == "PodScheduled" and entry.get("status") == "False" \
                and entry.get("reason") == "Unschedulable":
            return f"Unschedulable: {entry.get('message') or 'no node can take the pod'}"
    return None


def ended_at(job: dict[str, Any], pod: dict[str, Any] | None) -> datetime | None:
    """When the attempt really ended: the container's finishedAt, else the Job's completion or failure time."""
    failed = condition(job, "Failed") or {}
    for stamp in (terminated(pod).get("finishedAt"), (job.get("status") or {}).get("completionTime"),
                  failed.get("lastTransitionTime")):
        if isinstance(stamp, str):
            try:
                return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


def outcome_of(job: dict[str, Any], pod: dict[str, Any] | None, limits: str = "") -> Outcome:
    """How a finished Job's attempt ended. `limits` names its memory limit and deadline for the messages.

    OOMKilled is FAILED (the job asked for too little, as on the other runners); DeadlineExceeded is
    TIMEOUT; an eviction, or a Job that failed without its container ending, is an ERROR: not the job's
    own doing, so it may be retried.
    """
    end = ended_at(job, pod)
    where = f" ({limits})" if limits else ""
    ended = terminated(pod)
    code = ended.get("exitCode") if isinstance(ended.get("exitCode"), int) else None
    if condition(job, "Complete") is not None:
        return Outcome(AttemptStatus.DONE, code if code is not None else 0, ended_at=end)
    failed = condition(job, "Failed") or {}
    reason = failed.get("reason") or "Failed"
    message = failed.get("message") or ""
    if reason == "DeadlineExceeded":
        return Outcome(AttemptStatus.TIMEOUT, code, f"Kubernetes stopped the Job at its deadline{where}: "
                       f"DeadlineExceeded ({message or 'activeDeadlineSeconds passed'})", ended_at=end)
    status = (pod or {}).get("status") or {}
    if status.get("reason") in LOST_REASONS:
        return Outcome(AttemptStatus.ERROR, code, f"the pod was {LOST_REASONS[status['reason']]}: "
                       f"{status.get('message') or 'no message'}; not the job's fault, so it may be retried",
                       ended_at=end, cause=Cause.LOST)
    if ended.get("reason") == "OOMKilled":
        return Outcome(AttemptStatus.FAILED, code, f"out of memory{where}: Kubernetes killed the container "
                       f"(OOMKilled, exit code {code})", ended_at=end, cause=Cause.OOM)
    disrupted = next((c for c in status.get("conditions") or [] if isinstance(c, dict)
                      and c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)
    if disrupted is not None:  # Kubernetes 1.26+: the pod was deleted for its node (lost, preempted, drained)
        return Outcome(AttemptStatus.ERROR, code, f"the pod was disrupted ({disrupted.get('reason') or 'no reason'}: "
                       f"{disrupted.get('message') or 'no message'}); not the job's fault, so it may be retried",
                       ended_at=end, cause=Cause.LOST)
    if code is not None and code != 0:
        return Outcome(AttemptStatus.FAILED, code, f"exit code {code}", ended_at=end)
    return Outcome(AttemptStatus.ERROR, code, f"Kubernetes failed the Job ({reason}: {message or 'no message'})",
                   ended_at=end)
