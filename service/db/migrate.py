"""Alembic, driven from code: ``scalpel db upgrade [REV]`` / ``scalpel db downgrade REV``."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from service.db.engine import database_url, normalise_url

#: The Alembic folder: ``$SCALPEL_MIGRATIONS_DIR`` (set in the container image), else the source tree's.
MIGRATIONS_DIR = Path(
    os.environ.get("SCALPEL_MIGRATIONS_DIR") or Path(__file__).resolve().parent.parent.parent / "migrations"
)


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(url or database_url()).replace("%", "%%"))
    return config


def upgrade(revision: str = "head", url: str | None = None) -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(revision: str, url: str | None = None) -> None:
    command.downgrade(alembic_config(url), revision)


class DatabaseNotReady(RuntimeError):
    """The database cannot be reached, or is not at the revision this code needs (empty, older or newer)."""


def require_current_schema(engine: Engine) -> None:
    """Raise :class:`DatabaseNotReady`, saying what to do, unless the database answers and is at head.

    Serving on an unmigrated or half-migrated database would fail later, on the first write,
    with a raw SQL error; this fails at start-up with one line a person can act on."""
    heads = set(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise DatabaseNotReady(f"cannot reach database {where}: {reason}") from error
    if current != heads:
        found = ", ".join(sorted(current)) or "none (no Scalpel tables)"
        raise DatabaseNotReady(
            f"database {where} is at revision {found}; this Scalpel needs {', '.join(sorted(heads))}: "
            f"run `scalpel db upgrade{'' if where == database_url() else ' --url ' + where}` first"
        )
