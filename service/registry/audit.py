"""The hash-chained, signed audit log: append inside the caller's transaction, verify the whole chain.

Each event's hash covers the previous one; each event is signed (``service.registry.audit_keys``),
so the head's signature covers the chain. Verification recomputes every link, then checks the
head's signature and the witness (the newest head this host signed), and a pinned head if given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from service.db.models import AuditEvent, AuditHead
from service.registry.audit_keys import AuditKeyring
from service.registry.errors import AuditTampered

GENESIS = "0" * 64

#: ``Session.info`` keys: the keyring a unit of work signs with, and the head a transaction signed
#: (remembered in the witness once it commits).
KEYS = "audit_keys"
SIGNED = "audit_signed_head"


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
    """Append one event to the chain in the session's transaction (the head must be locked by it).

    With a signing key, the head it extends must carry a trusted signature first (else signing
    would vouch for a forged tail: AuditTampered, DATA_LOSS), and the new event is signed."""
    head = lock_head(session)
    keys: AuditKeyring | None = session.info.get(KEYS)
    signing = keys is not None and keys.signer is not None
    own = keys.own_head(head.seq, head.hash) if signing else None
    if signing and head.seq and own is None:
        problem = head_trust_problem(session.connection(), keys, head.seq, head.hash)
        if problem:
            raise AuditTampered(f"{problem}: writes are refused until the audit log is restored (VerifyAudit)")
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
    if signing:
        event.key_id, event.signature = keys.sign(seq, digest)
        chain = digest if seq == 1 else (own or chain_id(session.connection()))
        session.info[SIGNED] = (chain, seq, digest)
    session.add(event)
    head.seq, head.hash = seq, digest
    return event


def remember_signed_head(session: Session) -> None:
    """After a commit: the head the transaction signed becomes this host's witness of the chain."""
    signed = session.info.pop(SIGNED, None)
    keys: AuditKeyring | None = session.info.get(KEYS)
    if signed and keys is not None:
        keys.remember(*signed)


def chain_id(connection: Connection) -> str:
    """The chain's identity: its first event's hash ("" for an empty log)."""
    return connection.execute(select(AuditEvent.hash).where(AuditEvent.seq == 1)).scalar_one_or_none() or ""


def head_trust_problem(connection: Connection, keys: AuditKeyring, seq: int, digest: str) -> str:
    """ "" when event ``seq`` (the head) is signed by a trusted key over ``seq:digest``, or when no
    event was ever signed (a log from before signing, adopted by ``adopt_signing``); else why not."""
    row = connection.execute(select(AuditEvent.key_id, AuditEvent.signature).where(AuditEvent.seq == seq)).one_or_none()
    signer_id, signature = row if row is not None else (None, None)
    problem = keys.head_problem(seq, digest, signer_id, signature)
    if problem and not signature and is_legacy(connection, keys):
        return ""
    return problem


def is_legacy(connection: Connection, keys: AuditKeyring) -> bool:
    """A log from before signing: no event is signed, and this host never signed this chain (so
    stripping every signature does not make a signed log look legacy here)."""
    if connection.execute(select(AuditEvent.seq).where(AuditEvent.signature.is_not(None)).limit(1)).first():
        return False
    return keys.witness(chain_id(connection)) is None


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events_checked: int
    first_broken_seq: int | None = None
    problem: str = ""
    head_seq: int = 0  # the last event verified, and its hash: an operator pins these outside the database
    head_hash: str = ""
    mismatches: tuple[str, ...] = ()  # state rows that disagree with the log (see replay.py)
    head_key_id: str = ""  # the key that signed the head, and its signature (a checkpoint keeps both)
    head_signature: str = ""
    linked: bool = True  # every hash and link checked out (whatever the head's signature, pin and witness)


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` → (seq, hash); ValueError with the expected form otherwise."""
    seq, _, digest = text.partition(":")
    if not seq.isascii() or not seq.isdigit() or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError(f"expected SEQ:HASH (a sequence number and a 64-character hex SHA-256), got {text[:80]!r}")
    return int(seq), digest


def verify(
    connection: Connection,
    keys: AuditKeyring | None,
    batch: int = 5000,
    expect_head: tuple[int, str] | None = None,
) -> VerifyResult:
    """Recompute every event's hash and link; report the first broken one. Then, in this order: a
    pinned head (``expect_head``) must still be in the log; with ``keys``, so must the newest head
    this host signed (its witness), and the head must carry a trusted signature."""
    witness = keys.witness(chain_id(connection)) if keys is not None else None
    kept = {head[0] for head in (expect_head, witness) if head}
    chain = _verify_chain(connection, batch, kept)
    result = chain.result
    if not result.ok:
        return result
    for head, kind in ((expect_head, "pinned head"), (witness, "signed event")):
        if head is None:
            continue
        seq, digest = head
        if chain.kept.get(seq) != digest:
            found = "is missing" if seq not in chain.kept else f"has hash {chain.kept[seq][:12]}…"
            first = result.head_seq + 1 if seq > result.head_seq else seq
            return _failed(
                result,
                first,
                f"the {kind} {seq}:{digest[:12]}… is not in the log (event {seq} {found}): "
                "the log was truncated or rewritten",
            )
    if keys is not None and result.head_seq:
        problem = keys.head_problem(result.head_seq, result.head_hash, result.head_key_id, result.head_signature)
        if problem and not result.head_signature and is_legacy(connection, keys):
            problem += " (a log from before signing: `scalpel db upgrade` or the next start signs its head)"
        if problem:
            return _failed(result, result.head_seq, problem)
    return result


def _failed(result: VerifyResult, seq: int, problem: str) -> VerifyResult:
    return dataclasses.replace(result, ok=False, first_broken_seq=seq, problem=problem)


@dataclass(frozen=True)
class _Chain:
    result: VerifyResult
    kept: dict[int, str]  # the hashes of the events asked for by sequence number


def _verify_chain(connection: Connection, batch: int, keep: set[int]) -> _Chain:
    table = AuditEvent.__table__
    prev_hash, expected_seq, checked, last = GENESIS, 1, 0, 0
    kept: dict[int, str] = {}
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
                problem = f"event {expected_seq} is missing (next is {seq})"
                return _Chain(VerifyResult(False, checked, expected_seq, problem, linked=False), kept)
            if stored_prev != prev_hash:
                problem = f"prev_hash {stored_prev[:12]}… does not link to event {seq - 1} ({prev_hash[:12]}…)"
                return _Chain(VerifyResult(False, checked, seq, problem, linked=False), kept)
            recomputed = event_hash(seq, created_at, actor, action, subject, payload_json, stored_prev)
            if recomputed != stored_hash:
                problem = f"content changed: hash recomputes to {recomputed[:12]}…, stored {stored_hash[:12]}…"
                return _Chain(VerifyResult(False, checked, seq, problem, linked=False), kept)
            prev_hash, expected_seq, checked, last = stored_hash, seq + 1, checked + 1, seq
            if seq in keep:
                kept[seq] = stored_hash
    head_seq, head_hash = connection.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    if head_seq != checked or head_hash != prev_hash:
        first = checked + 1 if head_seq > checked else head_seq
        problem = f"chain head says seq {head_seq}, log ends at {checked} (events removed at the end?)"
        return _Chain(VerifyResult(False, checked, first, problem, linked=False), kept)
    signed = connection.execute(select(table.c.key_id, table.c.signature).where(table.c.seq == checked)).one_or_none()
    head_key, head_signature = signed if signed is not None else (None, None)
    return _Chain(
        VerifyResult(True, checked, None, "", checked, prev_hash, (), head_key or "", head_signature or ""), kept
    )
