"""The core store: runs, task_runs, attempts, and the seed's two views.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateView

from jobgraph.store.views import views_0001

revision = "0001"
down_revision = None


def upgrade() -> None:
    """Create the tables of the first release and the views with the seed's names."""
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("pipeline", sa.String(255), nullable=False, index=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run_attempt", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("scheduled_time", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("snapshot", sa.Text, nullable=False),
        sa.Column("owner", sa.String(300)),
    )
    op.create_table(
        "task_runs",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("pool", sa.String(255), nullable=False),
        sa.Column("image", sa.Text, nullable=False),
        sa.Column("predecessors", sa.Text, nullable=False),
        sa.Column("is_finalizer", sa.Boolean, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("duration_secs", sa.Float),
        sa.Column("return_value", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.PrimaryKeyConstraint("run_id", "task"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], ondelete="CASCADE"),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("log_path", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("duration_secs", sa.Float),
        sa.Column("created_date", sa.DateTime, nullable=False),
        sa.UniqueConstraint("run_id", "task", "attempt"),
        sa.ForeignKeyConstraint(["run_id", "task"], ["task_runs.run_id", "task_runs.task"], ondelete="CASCADE"),
    )
    for name, query in views_0001(op.get_bind().dialect).items():
        op.execute(CreateView(query, name))


def downgrade() -> None:
    """Drop everything 0001 made."""
    for name in ("jobs_run_stats", "task_logging_stats"):
        op.execute(sa.text(f"DROP VIEW {name}"))
    for table in ("attempts", "task_runs", "runs"):
        op.drop_table(table)
