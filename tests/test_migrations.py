"""Alembic migrations: real downgrades, and no drift between the models and the revisions."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.db.engine import make_engine
from service.db.migrate import downgrade, upgrade
from service.db.models import Base


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_to_base_and_upgrade_again(db_url) -> None:
    expected = {table.name for table in Base.metadata.sorted_tables}
    assert _tables(db_url) == expected
    downgrade("base", db_url)
    assert _tables(db_url) == set()
    upgrade("head", db_url)
    assert _tables(db_url) == expected


def test_models_and_migrations_do_not_drift(db_url) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_db_cli_wraps_alembic(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env_run = [sys.executable, "-m", "service.cli", "db"]
    subprocess.run([*env_run, "upgrade", "--url", url], check=True, capture_output=True)
    assert "audit_events" in _tables(url)
    subprocess.run([*env_run, "downgrade", "0001", "--url", url], check=True, capture_output=True)
    assert "audit_events" in _tables(url)
    subprocess.run([*env_run, "downgrade", "base", "--url", url], check=True, capture_output=True)
    assert _tables(url) == set()
