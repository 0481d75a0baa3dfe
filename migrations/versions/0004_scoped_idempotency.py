"""Idempotency keys are scoped to the caller and remember a hash of the request they answered.

A ``request_id`` reused by another caller is another key; reused by the same caller with a
different request it is refused. Records written before this revision belong to no caller
(``actor`` ''), so a retry that spans the upgrade is treated as a new request.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=True),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("actor", "request_id", name=op.f("pk_idempotency_keys")),
    )
    op.execute(
        "INSERT INTO idempotency_keys (actor, request_id, operation, request_sha256, result_id, created_at) "
        "SELECT '', request_id, operation, NULL, result_id, created_at FROM idempotency"
    )
    op.drop_table("idempotency")


def downgrade() -> None:
    op.create_table(
        "idempotency",
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_idempotency")),
    )
    # one record per request_id survives (the first caller's, by name) when several callers shared it
    op.execute(
        "INSERT INTO idempotency (request_id, operation, result_id, created_at) "
        "SELECT k.request_id, k.operation, k.result_id, k.created_at FROM idempotency_keys k "
        "WHERE k.actor = (SELECT MIN(o.actor) FROM idempotency_keys o WHERE o.request_id = k.request_id)"
    )
    op.drop_table("idempotency_keys")
