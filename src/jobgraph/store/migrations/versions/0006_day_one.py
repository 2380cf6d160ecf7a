"""What a day-one user reaches for: a run's parameters and partial selection, a fanned-out job's item,
and the notifications sent about runs.

`runs.params` holds the JSON object of the values a run ran with; `runs.selection` the JSON of a partial
run's choice (`{"only": [...]}`, `{"from": "x"}`, `{"until": "y"}`, `{"retry_jobs": [...]}`), NULL for a
whole run. `task_runs.item` is the JSON of the item a `for_each` copy (`extract[3]`) ran with. A
notification row records one message to one target: sent or failed, how many tries, the error.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateView, DropView

from jobgraph.store.views import views_0003

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    """Nullable columns only (no table rebuild), and the notifications table."""
    op.add_column("runs", sa.Column("params", sa.Text()))
    op.add_column("runs", sa.Column("selection", sa.Text()))
    op.add_column("task_runs", sa.Column("item", sa.Text()))
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("pipeline", sa.String(255), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("task", sa.String(255)),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], ondelete="CASCADE", name="fk_notifications_run"),
    )
    op.create_index("ix_notifications_run", "notifications", ["run_id"])


def downgrade() -> None:
    """Back to 0005; SQLite rebuilds the tables to drop their columns, so the views over them go first."""
    op.drop_index("ix_notifications_run", "notifications")
    op.drop_table("notifications")
    views = views_0003(op.get_bind().dialect)
    for name in views:
        op.execute(DropView(sa.Table(name, sa.MetaData()), if_exists=True))
    with op.batch_alter_table("task_runs") as task_runs:
        task_runs.drop_column("item")
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("selection")
        runs.drop_column("params")
    for name, query in views.items():
        op.execute(CreateView(query, name))
