"""Alias-move propagation across two replicas on PostgreSQL (LISTEN/NOTIFY wake-ups).

    SCALPEL_TEST_POSTGRES_URL=postgresql://… python bench/replicas.py --json
    → {"propagation_p50_ms", "propagation_p99_ms", "moves"}

Without SCALPEL_TEST_POSTGRES_URL it says so and prints an empty object. The database named by
the variable is reset. Targets (issue 6): p50 ≤ 100 ms, p99 ≤ 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editors import Steering  # noqa: E402
from service.client import ScalpelClient  # noqa: E402
from service.db.migrate import upgrade  # noqa: E402
from service.registry import Registry  # noqa: E402
from tests.replicas import replicas, reset_postgres  # noqa: E402


def seconds_until_served(client: ScalpelClient, version: int, timeout: float = 5.0) -> float:
    """How long until ``client``'s replica serves ``version`` for the production alias."""
    started = time.perf_counter()
    while True:
        served = client.generate("toy", "The capital of Riia is", max_tokens=1).version
        elapsed = time.perf_counter() - started
        if served == f"models/toy/versions/{version}" or elapsed > timeout:
            return elapsed
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    url = os.environ.get("SCALPEL_TEST_POSTGRES_URL")
    if not url:
        print("SCALPEL_TEST_POSTGRES_URL is not set: no PostgreSQL to measure on", file=sys.stderr)
        print(json.dumps({}))
        return
    reset_postgres(url)
    upgrade("head", url)
    delays = []
    with tempfile.TemporaryDirectory() as tmp, replicas(url, Path(tmp), count=2) as started:
        registry = Registry(url)
        _, secret = registry.create_key("bench", "admin", "bench")
        (_, port_a), (_, port_b) = started
        a = ScalpelClient(f"127.0.0.1:{port_a}", secret)
        b = ScalpelClient(f"127.0.0.1:{port_b}", secret)
        edit = a.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128) * 0.01))
        version = a.create_version("toy", 0, append=[edit.id]).number
        registry.record_check_run("toy", version, "passed", [], "bench")
        for i in range(args.moves):
            target = version if i % 2 == 0 else 0
            if target:
                a.promote("toy", target)
            else:
                a.rollback("toy")
            delays.append(seconds_until_served(b, target) * 1000)
        a.close()
        b.close()
        registry.engine.dispose()
    reset_postgres(url)
    result = {
        "propagation_p50_ms": statistics.median(delays),
        "propagation_p99_ms": statistics.quantiles(delays, n=100)[98],
        "moves": len(delays),
    }
    print(json.dumps({k: round(v, 3) for k, v in result.items()}) if args.json else result)


if __name__ == "__main__":
    main()
