"""The seed's jobconfig.json, accepted exactly as the Snowflake quickstart writes it, mapped to native jobs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from jobgraph.config.fields import Name, Retries, Text
from jobgraph.config.model import Job, validated_job

ROOT_TASK = "root_task"
"""The seed's `after_task_name` for jobs that follow the root task only: no predecessor here."""

SEED_QUERY = "--query=select current_time() as time,'hello'"
"""The query every seed job passes to its image (ExecuteJobService's job spec)."""

SEED_FIELDS = frozenset(
    {"task_name", "image_name", "compute_pool_name", "job_name", "table_name", "retry_count", "after_task_name"}
)


def _split_seed_after(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value.strip().casefold() == ROOT_TASK:
        return []
    return value.split(",")


class SeedTask(BaseModel):
    """One object of the seed's array, with the seed's field names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_name: Name
    image_name: Text = Field(min_length=1)
    compute_pool_name: Name | None = None
    job_name: str | None = None
    table_name: Name | None = None
    retry_count: Retries = 0
    after_task_name: Annotated[tuple[Name, ...], BeforeValidator(_split_seed_after)]

    def to_job(self) -> Job:
        """The native job this seed task stands for: same image, pool, retries and predecessors.

        Built without validating again: every field it sets was validated here, by the same types the
        Job's fields have (a test checks that validating its fields as a Job gives the same job).
        """
        args = [SEED_QUERY]
        if self.table_name:
            args.append(f"--result_table={self.table_name}")
        job: dict[str, Any] = {
            "name": self.task_name,
            "image": self.image_name,
            "args": tuple(args),
            "after": self.after_task_name,
            "retries": self.retry_count,
        }
        if self.compute_pool_name:
            job["pool"] = self.compute_pool_name
        if self.job_name:
            job["container_name"] = self.job_name
        return validated_job(job)
