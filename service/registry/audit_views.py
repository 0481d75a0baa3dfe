"""Listing the audit log and verifying it (chain, pinned head, replay against the tables)."""

from __future__ import annotations

import dataclasses

from sqlalchemy import select

from service.db.models import (
    AuditEvent,
)
from service.registry import audit
from service.registry.audit_keys import encode_public
from service.registry.errors import (
    InvalidArgument,
)
from service.registry.replay import replay
from service.registry.unit_of_work import (
    Page,
    UnitOfWork,
)

#: Longest audit filter value (SQLite refuses LIKE patterns beyond 50,000 bytes; none is that long).
MAX_FILTER_CHARS = 1000


class AuditViews(UnitOfWork):
    """Listing the audit log and verifying it (chain, pinned head, replay against the tables)."""

    def list_audit(
        self,
        page_size: int = 50,
        page_token: str = "",
        action: str | None = None,
        subject_prefix: str | None = None,
        actor: str | None = None,
    ) -> Page:
        """Audit events newest first, optionally filtered by exact action, subject prefix and actor."""
        for field, value in (("action", action), ("subject", subject_prefix), ("actor", actor)):
            if value and len(value) > MAX_FILTER_CHARS:
                raise InvalidArgument(f"the {field} filter is {len(value)} characters; at most {MAX_FILTER_CHARS}")
        query = select(AuditEvent)
        if action:
            query = query.where(AuditEvent.action == action)
        if subject_prefix:
            query = query.where(AuditEvent.subject.startswith(subject_prefix, autoescape=True))
        if actor:
            query = query.where(AuditEvent.actor == actor)
        return self._page(query, AuditEvent.seq, page_size, page_token, lambda _, event: event)

    def verify_audit(self, expect_head: str = "") -> audit.VerifyResult:
        """Verify the chain, its head's signature and this host's witness; ``expect_head``
        ("SEQ:HASH", pinned earlier) must still be in it. A chain whose links hold is replayed
        against the state tables even when its head fails, so both findings are reported."""
        try:
            pinned = audit.parse_head(expect_head) if expect_head else None
        except ValueError as exc:
            raise InvalidArgument(f"expect_head: {exc}") from None
        with self.engine.connect() as connection:
            result = audit.verify(connection, self.audit_keys, expect_head=pinned)
            if not result.linked:  # a broken chain is the finding: replaying it would prove nothing
                return result
            mismatches = tuple(replay(connection))
        if not mismatches:
            return result
        return dataclasses.replace(
            result,
            ok=False,
            mismatches=mismatches,
            problem=result.problem or f"{len(mismatches)} rows disagree with the audit log; first: {mismatches[0]}",
        )

    def chain_id(self) -> str:
        """The audit chain's identity (its first event's hash; "" while the log is empty)."""
        with self.engine.connect() as connection:
            return audit.chain_id(connection)

    def adopt_signing(self, actor: str) -> bool:
        """Sign a log from before signing: append one ``audit.signing_key`` event (naming the key)
        when the head is unsigned and no event ever was. False, writing nothing, otherwise: a
        signed or empty log needs nothing, and an unsigned head after signed events is a forgery
        that signing would vouch for."""
        keys = self.audit_keys
        if keys.signer is None:
            return False
        with self._write() as session:
            head = audit.lock_head(session)
            connection = session.connection()
            signature = session.execute(select(AuditEvent.signature).where(AuditEvent.seq == head.seq)).scalar()
            if not head.seq or signature or not audit.is_legacy(connection, keys):
                return False
            public = encode_public(keys.signer.public_key())
            audit.append(session, actor, "audit.signing_key", "audit", {"key_id": keys.key_id, "public_key": public})
        return True
