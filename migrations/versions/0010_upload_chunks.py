"""Artifacts larger than one message (a real SAE is hundreds of MB) arrive in chunks
(``upload_chunks``): each chunk a row at its byte offset, kept until the resource that uses the
upload is created in the same transaction, which deletes them. Chunks live in the database, so
the chunks of one upload may reach any replica. The service role may read, insert and delete
them (an upload is consumed, never changed).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ROLE = "scalpel_service"


def upgrade() -> None:
    op.create_table(
        "upload_chunks",
        sa.Column("upload_id", sa.String(64), primary_key=True),
        sa.Column("offset", sa.BigInteger(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                    GRANT SELECT, INSERT, DELETE ON upload_chunks TO {ROLE};
                END IF;
            END
            $$
            """
        )


def downgrade() -> None:
    op.drop_table("upload_chunks")  # unfinished uploads only: a client sends them again
