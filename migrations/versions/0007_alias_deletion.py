"""Aliases can be deleted: a deleted alias keeps its row and history (``deleted_at`` set), and its
name is free again, so the one-name-per-model rule becomes a unique index over live aliases only
(a partial index: PostgreSQL and SQLite both have them).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("aliases") as batch:  # SQLite rebuilds the table to drop a constraint
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("uq_aliases_model_name", type_="unique")
    op.create_index(
        "uq_live_aliases_model_name",
        "aliases",
        ["model_id", "name"],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )


def downgrade() -> None:
    deleted = op.get_bind().execute(sa.text("SELECT count(*) FROM aliases WHERE deleted_at IS NOT NULL")).scalar()
    if deleted:
        raise RuntimeError(
            f"{deleted} deleted aliases keep their history here; the schema before 0007 cannot hold them "
            "(restore a backup taken before the upgrade instead)"
        )
    op.drop_index("uq_live_aliases_model_name", table_name="aliases")
    with op.batch_alter_table("aliases") as batch:
        batch.drop_column("deleted_at")
        batch.create_unique_constraint("uq_aliases_model_name", ["model_id", "name"])
