"""A ``scalpel serve`` process on a fresh data directory, as callers see the service: the
database migrated, a bench key created, the port read from the server's first line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "service.cli"]


@dataclass(frozen=True)
class Served:
    process: subprocess.Popen[str]
    port: int
    secret: str
    data_dir: Path
    http_port: int | None = None  # with --http-address: the OpenAI-compatible gateway's
    metrics_port: int | None = None  # with --metrics-address: /metrics's

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'scalpel.db'}"


@contextmanager
def serve_process(data_dir: Path, *options: str, root: Path | None = None) -> Iterator[Served]:
    """Start the server with ``options`` (after ``--address 127.0.0.1:0 --metrics-address off``, which
    ``--metrics-address 127.0.0.1:0`` among them overrides),
    from the checkout at ``root`` (default: this one); kill it on exit if it is still running."""
    root = root or ROOT
    env = {**os.environ, "SCALPEL_DATA_DIR": str(data_dir)}
    subprocess.run([*CLI, "db", "upgrade"], env=env, check=True, capture_output=True, cwd=root)
    created = subprocess.run(
        [*CLI, "keys", "create", "bench", "--role", "admin", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
    )
    process = subprocess.Popen(
        [*CLI, "serve", "--address", "127.0.0.1:0", "--metrics-address", "off", *options],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=root,
    )
    try:
        line = process.stdout.readline()
        port = int(re.search(r"on port (\d+)", line).group(1))
        http = re.search(r"HTTP on port (\d+)", line)
        metrics = re.search(r"metrics on port (\d+)", line)
        secret = json.loads(created.stdout)["secret"]
        yield Served(
            process,
            port,
            secret,
            Path(data_dir),
            int(http.group(1)) if http else None,
            int(metrics.group(1)) if metrics else None,
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
