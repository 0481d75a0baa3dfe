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

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def replicas(
    database_url: str, data_dir: Path, count: int = 2, config: Path | None = None
) -> Iterator[list[tuple[subprocess.Popen, int]]]:
    """``count`` server processes on ``database_url`` (already migrated); yields (process, port) pairs."""
    env = {**os.environ, "SCALPEL_DATA_DIR": str(data_dir), "SCALPEL_DATABASE_URL": database_url}
    extra = ["--config", str(config)] if config else []
    started = []
    try:
        for _ in range(count):
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
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
            )
            port = int(re.search(r"on port (\d+)", process.stdout.readline()).group(1))
            started.append((process, port))
        yield started
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def reset_postgres(url: str) -> None:
    """Empty the PostgreSQL test database whatever state (or revision) an earlier run left it in."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP SCHEMA public CASCADE")
            connection.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()


def seconds_until_served(client: ScalpelClient, version: int, timeout: float = 5.0) -> float:
    """How long until ``client``'s replica serves ``version`` for the production alias."""
    started = time.perf_counter()
    while True:
        served = client.generate("toy", "The capital of Riia is", max_tokens=1).version
        elapsed = time.perf_counter() - started
        if served == f"models/toy/versions/{version}" or elapsed > timeout:
            return elapsed
        time.sleep(0.005)
