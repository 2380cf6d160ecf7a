"""Each status SPCS reports for a job service, and the Outcome jobgraph records for it (never an exit code)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobgraph.runners.base import Cause
from jobgraph.runners.spcs_states import (
    GONE,
    TERMINAL,
    WAITING,
    container_message,
    exit_code,
    last_change,
    outcome_of,
    pending_outcome,
)
from jobgraph.states import AttemptStatus

NAME = "JG_0B5E3C1E_T_MYJOB_1_1"
FAILED_CONTAINER = [{"container_name": "main", "status": "FAILED", "message": "Container exited with code 2"}]


@pytest.mark.parametrize(("status", "by_jobgraph", "expected"), [
    ("DONE", False, AttemptStatus.DONE),
    ("FAILED", False, AttemptStatus.FAILED),
    ("INTERNAL_ERROR", False, AttemptStatus.ERROR),
    ("SUSPENDING", False, AttemptStatus.ERROR),
    ("SUSPENDED", False, AttemptStatus.ERROR),
    ("CANCELLING", False, AttemptStatus.ERROR),
    ("CANCELLED", False, AttemptStatus.ERROR),
    ("DELETING", False, AttemptStatus.ERROR),
    ("DELETED", False, AttemptStatus.ERROR),
    ("CANCELLED", True, AttemptStatus.CANCELLED),
    ("DELETED", True, AttemptStatus.CANCELLED),
    ("done", False, AttemptStatus.DONE),
])
def test_each_status(status: str, by_jobgraph: bool, expected: AttemptStatus) -> None:
    outcome = outcome_of(NAME, status, FAILED_CONTAINER, "PR_STD_POOL_XS", by_jobgraph=by_jobgraph)
    assert outcome.status == expected
    assert outcome.exit_code is None  # the rows have no LAST_EXIT_CODE: none is made up from the status


def test_the_sets_cover_every_documented_status() -> None:
    documented = {"PENDING", "RUNNING", "FAILED", "DONE", "SUSPENDING", "SUSPENDED", "DELETING", "DELETED",
                  "INTERNAL_ERROR", "CANCELLING", "CANCELLED"}
    assert documented == WAITING | TERMINAL
    assert not WAITING & TERMINAL and GONE <= TERMINAL


def test_the_messages_say_what_happened_and_what_to_do() -> None:
    failed = outcome_of(NAME, "FAILED", FAILED_CONTAINER, "P")
    assert failed.error == f"job service {NAME} FAILED: main FAILED: Container exited with code 2"
    suspended = outcome_of(NAME, "SUSPENDED", [], "PR_STD_POOL_S")
    assert suspended.error == (f"compute pool PR_STD_POOL_S was suspended under job service {NAME} (status "
                               "SUSPENDED): resume the pool (ALTER COMPUTE POOL PR_STD_POOL_S RESUME)")
    assert suspended.cause == Cause.LOST and failed.cause is None  # what retry_on: [lost] matches
    internal = outcome_of(NAME, "INTERNAL_ERROR", [], "P", unread="node reclaimed")
    assert internal.error == (f"Snowflake reported INTERNAL_ERROR for job service {NAME}; its log could not be read: "
                              "node reclaimed: not the job's doing, so it may be retried")
    assert outcome_of(NAME, "FAILED", [], "P").error.startswith(f"job service {NAME} FAILED: no message from SPCS")
    assert "does not know" in str(outcome_of(NAME, "STRANGE", [], "P").error)


def test_container_message_joins_every_container() -> None:
    rows = [{"container_name": "main", "status": "FAILED", "message": "OOMKilled"},
            {"container_name": "side", "status": "DONE", "message": ""}, {}]
    assert container_message(rows) == "main FAILED: OOMKilled; side DONE"


def test_the_exit_code_is_mains_last_exit_code_when_snowflake_gives_it() -> None:
    rows = [{"container_name": "side", "last_exit_code": 0},
            {"container_name": "main", "status": "FAILED", "last_exit_code": 137}]
    assert outcome_of(NAME, "FAILED", rows, "P").exit_code == 137
    assert exit_code([{"container_name": "main", "last_exit_code": "2"}]) == 2
    assert exit_code([{"container_name": "x", "last_exit_code": 0}]) == 0
    for absent in ([], [{"container_name": "main"}], [{"container_name": "main", "last_exit_code": None}],
                   [{"container_name": "main", "last_exit_code": True}],
                   [{"container_name": "main", "last_exit_code": "n/a"}]):
        assert exit_code(absent) is None


def test_last_change_only_when_it_is_a_real_moment_after_creation() -> None:
    created = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    later = created + timedelta(minutes=4)
    assert last_change({"created_on": created, "updated_on": later}) == later
    assert last_change({"updated_on": later}) == later
    assert last_change({"created_on": created, "updated_on": created}) is None  # never changed since creation
    assert last_change({"created_on": created, "updated_on": later.replace(tzinfo=None)}) is None  # no zone
    assert last_change({"created_on": created, "updated_on": "2026-01-02"}) is None
    assert last_change({}) is None


def test_a_service_pending_too_long_says_why_and_whether_it_was_dropped() -> None:
    pulled = [{"container_name": "main", "status": "PENDING", "message": "Failed to pull image"}]
    outcome = pending_outcome(NAME, 900, pulled, "PR_STD_POOL_S", None, None)
    assert (outcome.status, outcome.exit_code) == (AttemptStatus.ERROR, None)
    assert outcome.error == (f"job service {NAME} stayed PENDING for 900s (runners.spcs.pending_limit_secs): main "
                             f"PENDING: Failed to pull image; dropped it (DROP SERVICE {NAME})")
    nowhere = pending_outcome(NAME, 1.5, [{"instance_id": None, "status": None}], "PR_STD_POOL_S",
                              {"name": "PR_STD_POOL_S", "state": "STARTING"}, "000606: No active warehouse")
    assert nowhere.error == (f"job service {NAME} stayed PENDING for 1.5s (runners.spcs.pending_limit_secs): SPCS "
                             "has placed it on no node yet (compute pool PR_STD_POOL_S is STARTING); DROP SERVICE "
                             f"{NAME} failed, it may still start: 000606: No active warehouse")
