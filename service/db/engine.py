"""Engines for the registry database: SQLite (embedded default) or PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def data_dir() -> Path:
    """``$SCALPEL_DATA_DIR``, else ``~/.local/share/scalpel``."""
    return Path(os.environ.get("SCALPEL_DATA_DIR") or Path.home() / ".local" / "share" / "scalpel")


def database_url() -> str:
    """``$SCALPEL_DATABASE_URL``, else a SQLite file under the data directory."""
    return os.environ.get("SCALPEL_DATABASE_URL") or f"sqlite:///{data_dir() / 'scalpel.db'}"


def normalise_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use the psycopg (3) driver."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


READ_ONLY = "scalpel_read_only"


def read_only(engine: Engine) -> Engine:
    """The same engine (same pool) for read-only transactions."""
    return engine.execution_options(**{READ_ONLY: True})


def make_engine(url: str | None = None) -> Engine:
    """An engine for ``url`` (default :func:`database_url`).

    SQLite: the file's directory is created, WAL journal, foreign keys on, a busy timeout, and
    every transaction starts with ``BEGIN IMMEDIATE`` so concurrent writers queue instead of
    failing on lock upgrades — except on connections with the ``READ_ONLY`` execution option
    (:func:`read_only`), which begin deferred and never block on writers (WAL).
    """
    url = normalise_url(url or database_url())
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below starts transactions
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine
