"""What signing the audit chain costs, side by side with the unsigned chain in one run.

    python bench/audit.py --json
    → {"verify_events_per_s_signed", "verify_events_per_s_unsigned", "verify_signed_slowdown",
       "append_p50_ms_signed", "append_p50_ms_unsigned", "append_signed_ratio", "events"}

- **verify**: a chain of ``--events`` events (100,000 by default) written straight into a fresh
  SQLite database (hashes computed as the registry computes them, every event signed), then
  verified end to end: hash links only (the unsigned chain's verification) against hash links
  plus the head's signature and the witness (the signed chain's). Rounds alternate; figures are
  medians.
- **append**: one audited write (a transaction that locks the head, appends one event and
  commits) through the registry's own unit of work, with the signing key (sign the new head,
  check the old head's signature, update the witness file) and without it, alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, update

from service.db.migrate import upgrade
from service.db.models import AuditEvent, AuditHead
from service.registry import Registry, audit
from service.registry.audit_keys import AuditKeyring, load_keyring


def build_chain(registry: Registry, events: int, batch: int = 5000) -> None:
    """``events`` signed events, written in bulk (the registry's appends would take minutes)."""
    keys = registry.audit_keys
    prev, seq = audit.GENESIS, 0
    with registry.engine.begin() as connection:
        while seq < events:
            rows = []
            for _ in range(min(batch, events - seq)):
                seq += 1
                row = {
                    "seq": seq,
                    "created_at": "2026-12-07T00:00:00.000000Z",
                    "actor": "bench",
                    "action": "bench.event",
                    "subject": f"bench/{seq}",
                    "payload_json": json.dumps({"i": seq}),
                    "prev_hash": prev,
                }
                row["hash"] = prev = audit.event_hash(*row.values())
                row["key_id"], row["signature"] = keys.sign(seq, prev)
                rows.append(row)
            connection.execute(insert(AuditEvent), rows)
        connection.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=prev))


def time_verify(registry: Registry, signed: bool) -> float:
    with registry.engine.connect() as connection:
        start = time.perf_counter()
        result = audit.verify(connection, registry.audit_keys if signed else None)
        elapsed = time.perf_counter() - start
    assert result.ok, result
    return elapsed


def time_append(registry: Registry) -> float:
    start = time.perf_counter()
    with registry._write() as session:
        audit.append(session, "bench", "bench.append", "bench/append", {"t": start})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--appends", type=int, default=300, help="appends per side")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = load_keyring(Path(tmp) / "keys" / "audit_ed25519.pem")
        url = f"sqlite:///{tmp}/chain.db"
        upgrade("head", url)
        registry = Registry(url, audit_keys=keys)
        build_chain(registry, args.events)
        keys.remember(registry.chain_id(), args.events, _head_hash(registry))
        verify = {True: [], False: []}
        for round_ in range(args.rounds):
            for signed in (round_ % 2 == 0, round_ % 2 == 1):
                verify[signed].append(time_verify(registry, signed))
        registry.engine.dispose()

        sides = {}
        for name, keyring in (("signed", keys), ("plain", AuditKeyring(None, {}))):
            upgrade(
                "head", f"sqlite:///{tmp}/{name}.db"
            )  # one chain each: an unsigned write may not follow signed ones
            sides[name] = Registry(f"sqlite:///{tmp}/{name}.db", audit_keys=keyring)
        signing, plain = sides["signed"], sides["plain"]
        appends = {True: [], False: []}
        for index in range(args.appends):
            order = (signing, plain) if index % 2 == 0 else (plain, signing)
            for registry in order:
                appends[registry is signing].append(time_append(registry))
        for registry in (signing, plain):
            registry.engine.dispose()
    signed_s, unsigned_s = statistics.median(verify[True]), statistics.median(verify[False])
    append_signed, append_plain = statistics.median(appends[True]), statistics.median(appends[False])
    figures = {
        "events": args.events,
        "verify_events_per_s_signed": round(args.events / signed_s),
        "verify_events_per_s_unsigned": round(args.events / unsigned_s),
        "verify_signed_slowdown": round(signed_s / unsigned_s, 3),
        "append_p50_ms_signed": round(append_signed * 1e3, 3),
        "append_p50_ms_unsigned": round(append_plain * 1e3, 3),
        "append_signed_ratio": round(append_signed / append_plain, 3),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:32} {value}")


def _head_hash(registry: Registry) -> str:
    with registry.engine.connect() as connection:
        return connection.execute(AuditHead.__table__.select()).one().hash


if __name__ == "__main__":
    main()
