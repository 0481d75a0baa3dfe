"""A model may name the model it succeeds (``model_lineage``: a retrained or fine-tuned checkpoint
of the same family, shapes and vocabulary), and a version rebased onto a successor records its
origin version and its drift report (``rebases``). Both are insert-only: lineage and a rebase's
report never change once written (the service role may read and insert them, nothing more).
A model's sparse autoencoders (``saes``) are named resources too, insert-only: their weights are
an artifact, their identity and site audited.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ROLE = "scalpel_service"
TABLES = ("model_lineage", "rebases", "saes")


def upgrade() -> None:
    op.create_table(
        "model_lineage",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id"), primary_key=True),
        sa.Column("predecessor_id", sa.Integer(), sa.ForeignKey("models.id"), nullable=False, index=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rebases",
        sa.Column("version_id", sa.Integer(), sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("origin_version_id", sa.Integer(), sa.ForeignKey("versions.id"), nullable=False, index=True),
        sa.Column("report_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "saes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id"), nullable=False, index=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("site", sa.String(100), nullable=False),
        sa.Column("architecture", sa.String(16), nullable=False),
        sa.Column("d_sae", sa.Integer(), nullable=False),
        sa.Column("sae_sha256", sa.String(64), nullable=False),
        sa.Column("weights_sha256", sa.String(64), sa.ForeignKey("artifacts.sha256"), nullable=False, index=True),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("model_id", "name", name="uq_saes_model_name"),
    )
    if op.get_bind().dialect.name == "postgresql":
        grants = "; ".join(
            [f"GRANT SELECT, INSERT ON {table} TO {ROLE}" for table in TABLES]
            + [f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {ROLE}"]  # saes' id sequence
        )
        op.execute(
            f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                    {grants};
                END IF;
            END
            $$
            """
        )


def downgrade() -> None:
    rows = sum(op.get_bind().execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() for table in TABLES)
    if rows:
        raise RuntimeError(
            f"{rows} lineage and rebase rows are recorded; the schema before 0009 cannot hold them "
            "(restore a backup taken before the upgrade instead)"
        )
    op.drop_table("saes")
    op.drop_table("rebases")
    op.drop_table("model_lineage")
