"""On PostgreSQL, a ``scalpel_service`` role with only the privileges the service needs.

The service never deletes, truncates or alters anything: it reads every table, inserts rows,
updates the mutable ones (aliases, check runs, keys' revocation, current suites, the audit head),
and only inserts into ``audit_events``. Operators run migrations as the owner and let the service
log in as a user that has this role (``GRANT scalpel_service TO scalpel_app``): then no statement
the service sends can rewrite history, whatever a bug or an attacker makes it send. Where the
migrating user may not create roles, the role is skipped with a notice (README: Deploy).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ROLE = "scalpel_service"
READ_INSERT = (
    "models",
    "artifacts",
    "edits",
    "edit_artifacts",
    "versions",
    "version_edits",
    "alias_history",
    "check_suites",
    "idempotency_keys",
    "audit_events",
)
READ_INSERT_UPDATE = ("aliases", "current_suites", "check_runs", "api_keys", "audit_head")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    grants = [f"GRANT SELECT, INSERT ON {table} TO {ROLE}" for table in READ_INSERT]
    grants += [f"GRANT SELECT, INSERT, UPDATE ON {table} TO {ROLE}" for table in READ_INSERT_UPDATE]
    statements = "; ".join(
        [f"GRANT USAGE ON SCHEMA public TO {ROLE}", *grants, f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {ROLE}"]
    )
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                CREATE ROLE {ROLE} NOLOGIN;
            END IF;
            {statements};
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'role {ROLE} not created: the migrating user may not create roles';
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE};
                REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {ROLE};
                REVOKE ALL ON SCHEMA public FROM {ROLE};
            END IF;
        END
        $$
        """
    )
