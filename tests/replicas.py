"""Helpers to run real `scalpel serve` processes on one database (tests and bench/replicas.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.client import ScalpelClient
from service.db.engine import make_engine
from service.registry.audit_keys import key_file as audit_key_file

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def replicas(
    database_url: str, data_dir: Path, count: int = 2, config: Path | None = None
) -> Iterator[list[tuple[subprocess.Popen, int]]]:
    """``count`` server processes on ``database_url`` (already migrated); yields (process, port) pairs.
    Each server's log is appended to ``data_dir/serve-N.log``."""
    # every replica signs the audit chain with the key this test process signs with, as a deployment's
    # replicas share one key (service.registry.audit_keys)
    env = {
        **os.environ,
        "SCALPEL_DATA_DIR": str(data_dir),
        "SCALPEL_DATABASE_URL": database_url,
        "SCALPEL_AUDIT_KEY_FILE": str(audit_key_file()),
    }
    extra = ["--config", str(config)] if config else []
    started = []
    logs = []
    try:
        for number in range(count):
            logs.append(open(data_dir / f"serve-{number}.log", "ab"))  # noqa: SIM115 - closed below
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "service.cli",
                    "serve",
                    "--address",
                    "127.0.0.1:0",
                    "--metrics-address",
                    "off",
                    *extra,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=logs[-1],  # the server's log, for a failing test to be read
                text=True,
                cwd=ROOT,
            )
            started.append(process)
        # started together, read after: the servers' starts overlap
        yield [(process, int(re.search(r"on port (\d+)", process.stdout.readline()).group(1))) for process in started]
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def worker_database(url: str, worker: str) -> str:
    """``url`` with its database replaced by one for xdist worker ``worker``, created if absent."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    name = f"{parsed.database}_{worker}"
    engine = make_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if not connection.exec_driver_sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").first():
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


def create_shared_roles(url: str) -> None:
    """The cluster-wide roles the migrations (``scalpel_service``) and the role test
    (``scalpel_app_test``) create, made before any worker runs."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for role, login in (("scalpel_service", "NOLOGIN"), ("scalpel_app_test", "LOGIN")):
                connection.exec_driver_sql(
                    f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
                    f"CREATE ROLE {role} {login}; END IF; END $$"
                )
    finally:
        engine.dispose()


def reset_postgres(url: str) -> None:
    """Empty the PostgreSQL test database whatever state (or revision) an earlier run left it in."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP SCHEMA public CASCADE")
            connection.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()


def served_eventually(client: ScalpelClient, version: int, timeout: float = 60.0) -> bool:
    """Whether ``client``'s replica comes to serve ``version`` for the production alias. The timeout
    only bounds a hang: how fast replicas converge is measured by ``bench/replicas.py``, not here."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.generate("toy", "The capital of Riia is", max_tokens=1).version == f"models/toy/versions/{version}":
            return True
        time.sleep(0.02)
    return False
