"""Deployed pipelines and their versions, schedule fires, the scheduler's lease; runs know their trigger.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    """Add what `deploy` and `serve` record."""
    op.create_table(
        "pipelines",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("schedule", sa.String(255)),
        sa.Column("anchor", sa.DateTime, nullable=False),
        sa.Column("next_fire_at", sa.DateTime),
        sa.Column("failures_in_row", sa.Integer, nullable=False),
        sa.Column("deployed_at", sa.DateTime, nullable=False),
        sa.Column("note", sa.Text),
    )
    op.create_table(
        "pipeline_versions",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("snapshot", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", "version"),
    )
    op.create_table(
        "fires",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(255), nullable=False, index=True),
        sa.Column("scheduled_time", sa.DateTime, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(36)),
        sa.Column("note", sa.Text),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(300), nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("trigger", sa.String(16)))
        runs.add_column(sa.Column("pipeline_version", sa.String(64)))


def downgrade() -> None:
    """Back to 0001."""
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("pipeline_version")
        runs.drop_column("trigger")
    for table in ("leases", "fires", "pipeline_versions", "pipelines"):
        op.drop_table(table)
