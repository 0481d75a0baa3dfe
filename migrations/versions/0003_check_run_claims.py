"""Check runs record the replica executing them and its heartbeat, so another replica can tell
a run whose executor died (stale heartbeat) from one still in progress, and their progress, so
any replica can stream it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("check_runs") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("progress_done", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("progress_total", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("progress_current", sa.String(length=100), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("check_runs") as batch:
        batch.drop_column("progress_current")
        batch.drop_column("progress_total")
        batch.drop_column("progress_done")
        batch.drop_column("heartbeat_at")
        batch.drop_column("claimed_by")
