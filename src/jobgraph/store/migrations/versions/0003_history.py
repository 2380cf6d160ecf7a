"""The seed's tables as the seed means them: history per graph run attempt, aware times, job_attempts.

- `task_runs` gets `run_attempt` in its key: a retry adds rows instead of resetting the earlier
  attempt's, so the finalizer's `task_logging_stats` is append-only history; `attempts` says which
  graph run attempt each execution belonged to. Rows of 0002 (which kept only each job's latest
  state) are carried over under their run's current `run_attempt`.
- Times become `timestamptz` on PostgreSQL (the values were naive UTC); SQLite keeps UTC text.
- On PostgreSQL a `datetime` domain (Snowflake's DATETIME is TIMESTAMP_NTZ) lets the quickstart's
  `ORDER BY CAST(QUERY_START_TIME AS DATETIME)` run as written.
- The views are recreated: jobs_run_stats (one row per job and graph run attempt), task_logging_stats
  (one row per job of each graph run attempt, without the finalizer) and job_attempts.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateView, DropView

from jobgraph.store.views import views_0001, views_0003

revision = "0003"
down_revision = "0002"

_KEPT_TIMES = {
    "runs": ("started_at", "scheduled_time", "finished_at"),
    "pipelines": ("anchor", "next_fire_at", "deployed_at"),
    "pipeline_versions": ("created_at",),
    "fires": ("scheduled_time", "at"),
    "leases": ("expires_at",),
}
_TASK_COLUMNS = ("run_id", "task", "state", "attempts", "pool", "image", "predecessors", "is_finalizer",
                 "started_at", "finished_at", "duration_secs", "return_value", "error_message")
_ATTEMPT_COLUMNS = ("id", "run_id", "task", "attempt", "status", "exit_code", "error", "log_path",
                    "started_at", "finished_at", "duration_secs", "created_date")
_TIMES = {"started_at", "finished_at", "created_date"}


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _task_runs(name: str, aware: bool, with_run_attempt: bool) -> None:
    when = sa.DateTime(timezone=aware)
    key = ("run_id", "task", "run_attempt") if with_run_attempt else ("run_id", "task")
    op.create_table(
        name,
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        *([sa.Column("run_attempt", sa.Integer, nullable=False)] if with_run_attempt else []),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("pool", sa.String(255), nullable=False),
        sa.Column("image", sa.Text, nullable=False),
        sa.Column("predecessors", sa.Text, nullable=False),
        sa.Column("is_finalizer", sa.Boolean, nullable=False),
        sa.Column("started_at", when),
        sa.Column("finished_at", when),
        sa.Column("duration_secs", sa.Float),
        sa.Column("return_value", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.PrimaryKeyConstraint(*key, name="pk_task_runs" if with_run_attempt else None),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], ondelete="CASCADE",
                                name="fk_task_runs_run" if with_run_attempt else None),
    )


def _attempts(name: str, parent: str, aware: bool, with_run_attempt: bool) -> None:
    when = sa.DateTime(timezone=aware)
    key = ["run_id", "task", "run_attempt"] if with_run_attempt else ["run_id", "task"]
    op.create_table(
        name,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        *([sa.Column("run_attempt", sa.Integer, nullable=False)] if with_run_attempt else []),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("log_path", sa.Text, nullable=False),
        sa.Column("started_at", when, nullable=False),
        sa.Column("finished_at", when),
        sa.Column("duration_secs", sa.Float),
        sa.Column("created_date", when, nullable=False),
        sa.UniqueConstraint("run_id", "task", "attempt",
                            name="uq_attempts_run_task_attempt" if with_run_attempt else None),
        sa.ForeignKeyConstraint(key, [f"{parent}.{c}" for c in key], ondelete="CASCADE",
                                name="fk_attempts_task_run" if with_run_attempt else None),
    )


def _copied(source: sa.TableClause, name: str) -> sa.ColumnElement[object]:
    """A column as the copy reads it: on PostgreSQL a time is re-read in UTC across the type change."""
    column = source.c[name]
    return sa.func.timezone("UTC", column) if name in _TIMES and _postgres() else column


def _replace(old: str, new: str) -> None:
    op.drop_table(old)
    op.rename_table(new, old)


def _drop_views(names: tuple[str, ...]) -> None:
    for name in names:
        op.execute(DropView(sa.Table(name, sa.MetaData()), if_exists=True))


def _create_views(views: dict[str, sa.Select[tuple[object, ...]]]) -> None:
    for name, query in views.items():
        op.execute(CreateView(query, name))


def _retype_kept_times(aware: bool) -> None:
    """On PostgreSQL, the other tables' times change type, read as UTC either way."""
    if not _postgres():
        return
    for table, columns in _KEPT_TIMES.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.DateTime(timezone=aware),
                            postgresql_using=f"timezone('UTC', {column})")


def _restart_attempt_ids() -> None:
    """The copied ids came with their values; PostgreSQL's sequence must go on after the largest."""
    if _postgres():
        op.execute(sa.select(sa.func.setval(sa.func.pg_get_serial_sequence("attempts", "id"),
                                            sa.func.coalesce(sa.func.max(sa.column("id")), 0) + 1, False))
                   .select_from(sa.table("attempts")))


def upgrade() -> None:
    """Per-attempt history tables, aware times, the `datetime` domain, and the three views."""
    _drop_views(("jobs_run_stats", "task_logging_stats"))
    _retype_kept_times(aware=True)
    _task_runs("task_runs_0003", aware=True, with_run_attempt=True)
    _attempts("attempts_0003", "task_runs_0003", aware=True, with_run_attempt=True)
    runs = sa.table("runs", sa.column("run_id"), sa.column("run_attempt"))
    old_tasks = sa.table("task_runs", *map(sa.column, _TASK_COLUMNS))
    new_tasks = sa.table("task_runs_0003", *map(sa.column, (*_TASK_COLUMNS, "run_attempt")))
    op.execute(new_tasks.insert().from_select(
        [*_TASK_COLUMNS, "run_attempt"],
        sa.select(*(_copied(old_tasks, c) for c in _TASK_COLUMNS), runs.c.run_attempt)
        .select_from(old_tasks.join(runs, old_tasks.c.run_id == runs.c.run_id))))
    old_attempts = sa.table("attempts", *map(sa.column, _ATTEMPT_COLUMNS))
    new_attempts = sa.table("attempts_0003", *map(sa.column, (*_ATTEMPT_COLUMNS, "run_attempt")))
    op.execute(new_attempts.insert().from_select(
        [*_ATTEMPT_COLUMNS, "run_attempt"],
        sa.select(*(_copied(old_attempts, c) for c in _ATTEMPT_COLUMNS), runs.c.run_attempt)
        .select_from(old_attempts.join(runs, old_attempts.c.run_id == runs.c.run_id))))
    _replace("attempts", "attempts_0003")
    _replace("task_runs", "task_runs_0003")
    _restart_attempt_ids()
    if _postgres():
        exists = op.get_bind().execute(sa.text("SELECT 1 FROM pg_type WHERE typname = 'datetime'")).first()
        if exists is None:
            op.execute(sa.text("CREATE DOMAIN datetime AS timestamp without time zone"))
    _create_views(views_0003(op.get_bind().dialect))


def downgrade() -> None:
    """Back to 0002: each job's latest row only, naive UTC times, the two views of 0001."""
    _drop_views(("jobs_run_stats", "task_logging_stats", "job_attempts"))
    if _postgres():
        op.execute(sa.text("DROP DOMAIN IF EXISTS datetime"))
    _task_runs("task_runs_0002", aware=False, with_run_attempt=False)
    _attempts("attempts_0002", "task_runs_0002", aware=False, with_run_attempt=False)
    tasks = sa.table("task_runs", *map(sa.column, (*_TASK_COLUMNS, "run_attempt")))
    later = tasks.alias("later")
    latest = ~sa.exists().where(sa.and_(later.c.run_id == tasks.c.run_id, later.c.task == tasks.c.task,
                                        later.c.run_attempt > tasks.c.run_attempt))
    op.execute(sa.table("task_runs_0002", *map(sa.column, _TASK_COLUMNS)).insert().from_select(
        list(_TASK_COLUMNS), sa.select(*(_copied(tasks, c) for c in _TASK_COLUMNS)).where(latest)))
    old_attempts = sa.table("attempts", *map(sa.column, _ATTEMPT_COLUMNS))
    op.execute(sa.table("attempts_0002", *map(sa.column, _ATTEMPT_COLUMNS)).insert().from_select(
        list(_ATTEMPT_COLUMNS), sa.select(*(_copied(old_attempts, c) for c in _ATTEMPT_COLUMNS))))
    _replace("attempts", "attempts_0002")
    _replace("task_runs", "task_runs_0002")
    _restart_attempt_ids()
    _retype_kept_times(aware=False)
    _create_views(views_0001(op.get_bind().dialect))
