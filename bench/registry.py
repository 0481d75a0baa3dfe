"""Registry latency and audit verification throughput, on SQLite and (when configured) PostgreSQL.

    python bench/registry.py --json
    → {"alias_move_p50_ms_sqlite", "alias_move_p99_ms_sqlite", [the same for postgres],
       "verify_events_per_s", [verify_events_per_s_postgres]}

Targets (issue 4): alias move p50 ≤ 10 ms on SQLite; verify ≥ 50k events/s (100k events).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from editors import Steering  # noqa: E402
from service.db.migrate import upgrade  # noqa: E402
from service.db.models import AuditEvent, AuditHead  # noqa: E402
from service.registry import Registry  # noqa: E402
from service.registry.audit import GENESIS, event_hash  # noqa: E402
from tests.replicas import reset_postgres  # noqa: E402


def alias_moves(url: str, moves: int) -> tuple[float, float]:
    """p50 and p99 (ms) of promote / rollback calls alternating between two checked versions."""
    registry = Registry(url)
    registry.register_model("bench", "toy", "ab" * 32, "bench")
    registry.set_suite("bench", {}, "bench")
    for scale in (1.0, 2.0):
        edit = registry.create_edit(
            "bench", Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(8), scale=scale), "bench"
        )
        version = registry.create_version("bench", 0, "bench", append=[edit.id])
        registry.record_check_run("bench", version.number, "passed", [], "bench")
    etag = registry.get_alias("bench", "production").etag
    times = []
    for i in range(moves):
        started = time.perf_counter()
        if i % 3 == 2:
            etag = registry.rollback("bench", "production", "bench", etag).etag
        else:
            etag = registry.promote("bench", "production", 1 + i % 2, "bench", etag).etag
        times.append((time.perf_counter() - started) * 1000)
    registry.engine.dispose()
    quantiles = statistics.quantiles(times, n=100)
    return statistics.median(times), quantiles[98]


def verify_throughput(url: str, events: int) -> float:
    """Events per second of a full ``verify`` over ``events`` chained events (written in bulk)."""
    registry = Registry(url)
    rows, prev = [], GENESIS
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for seq in range(1, events + 1):
        payload = json.dumps({"n": seq})
        digest = event_hash(seq, stamp, "bench", "bench.event", f"bench/{seq}", payload, prev)
        rows.append(
            {
                "seq": seq,
                "created_at": stamp,
                "actor": "bench",
                "action": "bench.event",
                "subject": f"bench/{seq}",
                "payload_json": payload,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    with registry.engine.begin() as connection:
        for start in range(0, events, 10_000):
            connection.execute(AuditEvent.__table__.insert(), rows[start : start + 10_000])
        connection.execute(AuditHead.__table__.update().values(seq=events, hash=prev))
    started = time.perf_counter()
    result = registry.verify_audit()
    elapsed = time.perf_counter() - started
    registry.engine.dispose()
    if not result.ok or result.events_checked != events:
        raise SystemExit(f"verify failed on the benchmark chain: {result}")
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=300)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for purpose in ("moves", "verify"):
            url = f"sqlite:///{Path(tmp) / purpose}.db"
            upgrade("head", url)
            if purpose == "moves":
                p50, p99 = alias_moves(url, args.moves)
                results |= {"alias_move_p50_ms_sqlite": p50, "alias_move_p99_ms_sqlite": p99}
            else:
                results["verify_events_per_s"] = verify_throughput(url, args.events)
    postgres = os.environ.get("SCALPEL_TEST_POSTGRES_URL")
    if postgres:
        for purpose in ("moves", "verify"):
            reset_postgres(postgres)
            upgrade("head", postgres)
            if purpose == "moves":
                p50, p99 = alias_moves(postgres, args.moves)
                results |= {"alias_move_p50_ms_postgres": p50, "alias_move_p99_ms_postgres": p99}
            else:
                results["verify_events_per_s_postgres"] = verify_throughput(postgres, args.events)
        reset_postgres(postgres)
    report(results, args.json)


if __name__ == "__main__":
    main()
