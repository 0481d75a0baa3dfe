"""The hash-chained audit log: append inside the caller's transaction, verify the whole chain."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from service.db.models import AuditEvent, AuditHead

GENESIS = "0" * 64


def event_hash(
    seq: int, created_at: str, actor: str, action: str, subject: str, payload_json: str, prev_hash: str
) -> str:
    canonical = json.dumps(
        [seq, created_at, actor, action, subject, payload_json, prev_hash], separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def lock_head(session: Session) -> AuditHead:
    """Lock the chain head (``SELECT … FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` already serialises)."""
    return session.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one()


def append(session: Session, actor: str, action: str, subject: str, payload: dict[str, Any]) -> AuditEvent:
    """Append one event to the chain in the session's transaction (the head must be locked by it)."""
    head = lock_head(session)
    created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    payload_json = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    seq = head.seq + 1
    digest = event_hash(seq, created_at, actor, action, subject, payload_json, head.hash)
    event = AuditEvent(
        seq=seq,
        created_at=created_at,
        actor=actor,
        action=action,
        subject=subject,
        payload_json=payload_json,
        prev_hash=head.hash,
        hash=digest,
    )
    session.add(event)
    head.seq, head.hash = seq, digest
    return event


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events_checked: int
    first_broken_seq: int | None = None
    problem: str = ""
    head_seq: int = 0  # the last event verified, and its hash: an operator pins these outside the database
    head_hash: str = ""
    mismatches: tuple[str, ...] = ()  # state rows that disagree with the log (see replay.py)


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` → (seq, hash); ValueError with the expected form otherwise."""
    seq, _, digest = text.partition(":")
    if not seq.isascii() or not seq.isdigit() or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError(f"expected SEQ:HASH (a sequence number and a 64-character hex SHA-256), got {text[:80]!r}")
    return int(seq), digest


def verify(connection: Connection, batch: int = 5000, expect_head: tuple[int, str] | None = None) -> VerifyResult:
    """Recompute every event's hash and link; report the first broken one (and a head mismatch).

    With ``expect_head`` (a head pinned earlier), the log must still hold that event with that hash."""
    result = _verify_chain(connection, batch, expect_head[0] if expect_head else None)
    if not result.ok or expect_head is None:
        return result
    seq, digest = expect_head
    if result.pinned_hash != digest:
        found = "is missing" if result.pinned_hash is None else f"has hash {result.pinned_hash[:12]}…"
        return VerifyResult(
            False,
            result.events_checked,
            seq,
            f"the pinned head {seq}:{digest[:12]}… is not in the log (event {seq} {found}): "
            "the log was truncated or rewritten",
            result.head_seq,
            result.head_hash,
        )
    return result


@dataclass(frozen=True)
class _ChainResult(VerifyResult):
    pinned_hash: str | None = None


def _verify_chain(connection: Connection, batch: int, pinned_seq: int | None) -> _ChainResult:
    table = AuditEvent.__table__
    prev_hash, expected_seq, checked, last = GENESIS, 1, 0, 0
    pinned_hash = None
    while True:
        rows = connection.execute(
            select(
                table.c.seq,
                table.c.created_at,
                table.c.actor,
                table.c.action,
                table.c.subject,
                table.c.payload_json,
                table.c.prev_hash,
                table.c.hash,
            )
            .where(table.c.seq > last)
            .order_by(table.c.seq)
            .limit(batch)
        ).all()
        if not rows:
            break
        for seq, created_at, actor, action, subject, payload_json, stored_prev, stored_hash in rows:
            if seq != expected_seq:
                return _ChainResult(False, checked, expected_seq, f"event {expected_seq} is missing (next is {seq})")
            if stored_prev != prev_hash:
                return _ChainResult(
                    False,
                    checked,
                    seq,
                    f"prev_hash {stored_prev[:12]}… does not link to event {seq - 1} ({prev_hash[:12]}…)",
                )
            recomputed = event_hash(seq, created_at, actor, action, subject, payload_json, stored_prev)
            if recomputed != stored_hash:
                return _ChainResult(
                    False,
                    checked,
                    seq,
                    f"content changed: hash recomputes to {recomputed[:12]}…, stored {stored_hash[:12]}…",
                )
            prev_hash, expected_seq, checked, last = stored_hash, seq + 1, checked + 1, seq
            if seq == pinned_seq:
                pinned_hash = stored_hash
    head_seq, head_hash = connection.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    if head_seq != checked or head_hash != prev_hash:
        return _ChainResult(
            False,
            checked,
            checked + 1 if head_seq > checked else head_seq,
            f"chain head says seq {head_seq}, log ends at {checked} (events removed at the end?)",
        )
    return _ChainResult(True, checked, head_seq=checked, head_hash=prev_hash, pinned_hash=pinned_hash)
