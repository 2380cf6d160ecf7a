"""Each attempt's runner and its handle in that runner's backend (a Slurm job id, a container name).

Recorded the moment the backend takes the attempt, so an attempt that outlives a jobgraph that died
can be found again by it.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateView, DropView

from jobgraph.store.views import views_0003

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    """Two nullable columns: attempts recorded before this have no handle."""
    op.add_column("attempts", sa.Column("runner", sa.String(32)))
    op.add_column("attempts", sa.Column("backend_ref", sa.String(255)))


def downgrade() -> None:
    """Drop the two columns again; SQLite rebuilds the table for that, so the views over it go first."""
    views = views_0003(op.get_bind().dialect)
    for name in views:
        op.execute(DropView(sa.Table(name, sa.MetaData()), if_exists=True))
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("backend_ref")
        batch.drop_column("runner")
    for name, query in views.items():
        op.execute(CreateView(query, name))
