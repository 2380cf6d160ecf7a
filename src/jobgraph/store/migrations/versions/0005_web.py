"""What the web page and the HTTP API need: a cancel request on a run, API tokens, and
indexes to page runs by (newest first: all, of one pipeline, in one state).

A cancel request is recorded on the run's row; the process that owns the run sees it and cancels the run as
Ctrl-C does (actions on a run never signal pids). An API token is stored as the SHA-256 of its secret, with
its scope; it is shown once, when it is made.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateView, DropView

from jobgraph.store.views import views_0003

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    """Two nullable columns on runs, the tokens table, and the runs' newest-first indexes."""
    op.add_column("runs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True)))
    op.add_column("runs", sa.Column("cancel_requested_by", sa.String(300)))
    op.create_index("ix_runs_started_at", "runs", ["started_at", "run_id"])
    op.drop_index("ix_runs_pipeline", "runs")  # the pipeline's runs newest first: its prefix serves it alone too
    op.create_index("ix_runs_pipeline_started_at", "runs", ["pipeline", "started_at", "run_id"])
    op.create_index("ix_runs_state_started_at", "runs", ["state", "started_at", "run_id"])
    op.create_table(
        "api_tokens",
        sa.Column("token_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    """Back to 0004; SQLite rebuilds the runs table to drop its columns, so the views over it go first."""
    op.drop_table("api_tokens")
    op.drop_index("ix_runs_state_started_at", "runs")
    op.drop_index("ix_runs_pipeline_started_at", "runs")
    op.create_index("ix_runs_pipeline", "runs", ["pipeline"])
    op.drop_index("ix_runs_started_at", "runs")
    views = views_0003(op.get_bind().dialect)
    for name in views:
        op.execute(DropView(sa.Table(name, sa.MetaData()), if_exists=True))
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("cancel_requested_by")
        runs.drop_column("cancel_requested_at")
    for name, query in views.items():
        op.execute(CreateView(query, name))
