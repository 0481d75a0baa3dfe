"""Alembic, driven from code: ``scalpel db upgrade [REV]`` / ``scalpel db downgrade REV``."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config

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
