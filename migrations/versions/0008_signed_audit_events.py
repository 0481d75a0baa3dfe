"""Audit events carry an Ed25519 signature over ``seq:hash`` and the id of the key that made it
(the key itself lives outside the database: service.registry.audit_keys). Events from before
signing keep NULLs; the next start signs the head it finds. An index on (subject, seq) finds a
resource's latest event (an alias's last move, checked before serving through it) without a scan.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("key_id", sa.String(16), nullable=True))
    op.add_column("audit_events", sa.Column("signature", sa.String(88), nullable=True))
    op.create_index("ix_audit_events_subject_seq", "audit_events", ["subject", "seq"])


def downgrade() -> None:
    signed = op.get_bind().execute(sa.text("SELECT count(*) FROM audit_events WHERE signature IS NOT NULL")).scalar()
    if signed:
        raise RuntimeError(
            f"{signed} audit events are signed; the schema before 0008 cannot hold their signatures "
            "(restore a backup taken before the upgrade instead)"
        )
    op.drop_index("ix_audit_events_subject_seq", table_name="audit_events")
    with op.batch_alter_table("audit_events") as batch:  # SQLite rebuilds the table to drop columns
        batch.drop_column("signature")
        batch.drop_column("key_id")
