"""Alembic environment: the URL comes from the Config built in service.db.migrate."""

from __future__ import annotations

from alembic import context

from service.db.engine import make_engine
from service.db.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
