"""The unit of work every registry operation shares: one transaction that locks the audit head,
checks the idempotency key and appends its audit event; plus the helpers all resources use.

Each operation is one transaction that also appends its audit event: a failure anywhere leaves
no rows behind. Create operations accept a ``request_id`` (the caller's own key, bound to a hash
of the request).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from service.db.engine import make_engine, read_only
from service.db.models import (
    AuditEvent,
    IdempotencyRecord,
    ModelRow,
)
from service.registry import audit
from service.registry.audit_keys import AuditKeyring, load_keyring
from service.registry.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
)

ROLES = ("reader", "editor", "approver", "admin")


RUN_STATES = ("running", "passed", "failed", "interrupted")


DEFAULT_MAX_ARTIFACT_BYTES = 64 * 1024 * 1024

#: The longest free text a caller may store (descriptions, reasons): a page of 1,000 stays small.
MAX_TEXT_CHARS = 4096

#: Every List page holds at most this share of the message limit (``max_artifact_bytes``), counted
#: as the stored text and bytes of its rows: a page of large rows ends early, with a token for the rest.
PAGE_SHARE_OF_MESSAGE = 0.5


T = TypeVar("T")


#: Alias and key names: ASCII letters, digits, '.', '_' and '-', starting and ending with a letter or
#: digit, at most 63 characters. The same rule on SQLite and PostgreSQL, and safe in resource names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", re.ASCII)


def check_name(kind: str, name: object) -> str:
    """``name`` if it matches :data:`NAME_PATTERN` and has no '..'; else InvalidArgument."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        shown = repr(name)[:80]
        raise InvalidArgument(
            f"{kind} name {shown} is not allowed: use 1-63 ASCII letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_text(field: str, value: object) -> str:
    """``value`` if it is a string of at most :data:`MAX_TEXT_CHARS` characters; else InvalidArgument."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"{field} is {len(value):,} characters; at most {MAX_TEXT_CHARS:,}")
    return value


def _stored_size(row: Any) -> int:
    """About how many bytes a row takes in a response: its text and bytes columns, plus a little."""
    values = (getattr(row, column.key) for column in row.__table__.columns)
    return 64 + sum(len(value) for value in values if isinstance(value, str | bytes))


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_etag() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_page_token: str  # "" when there is no next page


def encode_page_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode()


def decode_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != "after" or not value.isascii() or not value.isdigit() or len(value) > 18:
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"page_token {token[:64]!r} is not a token this API returned") from exc


class UnitOfWork:
    """Sessions, transactions, idempotency and paging over one database (SQLite or PostgreSQL)."""

    def __init__(
        self,
        engine: Engine | str | None = None,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        audit_keys: AuditKeyring | None = None,
    ):
        """``audit_keys``: the keyring that signs and verifies the audit chain (default: the one in
        force, see :mod:`service.registry.audit_keys`, its key made on first use)."""
        self.engine = engine if isinstance(engine, Engine) else make_engine(engine)
        self.max_artifact_bytes = max_artifact_bytes
        self.audit_keys = audit_keys if audit_keys is not None else load_keyring()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, info={audit.KEYS: self.audit_keys})
        event.listen(self._sessions, "after_commit", audit.remember_signed_head)
        self._read_engine = read_only(self.engine)
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction; the audit head is locked first, serialising writers."""
        with self._sessions.begin() as session:
            audit.lock_head(session)
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._read_sessions.begin() as session:
            yield session

    @contextmanager
    def _read_rows(self) -> Iterator[Connection]:
        """A read-only connection for a hot path that needs columns, not ORM objects (no session,
        no identity map: a fraction of the cost per call)."""
        with self._read_engine.connect() as connection:
            yield connection

    @staticmethod
    def _check_request_id(request_id: str | None) -> None:
        if request_id is not None and (not isinstance(request_id, str) or not 0 < len(request_id) <= 200):
            raise InvalidArgument("request_id must be a non-empty string of at most 200 characters")

    @staticmethod
    def _fingerprint(operation: str, request: object) -> str:
        return hashlib.sha256(json.dumps([operation, request], sort_keys=True, default=str).encode()).hexdigest()

    @staticmethod
    def _prior(session: Session, request_id: str, operation: str, fingerprint: str, actor: str) -> int | None:
        """The result id an earlier request with this key made (None: none did); a key used for
        another operation or another request is refused, naming it."""
        record = session.get(IdempotencyRecord, (actor, request_id))
        if record is None:
            return None
        if record.operation != operation:
            raise AlreadyExists(f"request_id {request_id!r} was already used for {record.operation}")
        if record.request_sha256 not in (None, fingerprint):
            raise InvalidArgument(
                f"request_id {request_id!r} was already used for a different {operation} request; "
                "use a new request_id for a new request"
            )
        return record.result_id

    def _replayed(
        self,
        request_id: str | None,
        operation: str,
        load: Callable[[Session, int], T],
        actor: str = "",
        request: object = None,
    ) -> T | None:
        """What an earlier identical request with ``request_id`` made, or None: lets an operation
        whose work comes before its transaction (a rebase) skip the work on a retry."""
        self._check_request_id(request_id)
        if not request_id:
            return None
        with self._read() as session:
            prior = self._prior(session, request_id, operation, self._fingerprint(operation, request), actor)
            return None if prior is None else load(session, prior)

    def _idempotent(
        self,
        request_id: str | None,
        operation: str,
        create: Callable[[Session], int],
        load: Callable[[Session, int], T],
        actor: str = "",
        request: object = None,
    ) -> T:
        """Run ``create`` once per (``actor``, ``request_id``); a repeat of the same ``request`` (any
        JSON value describing it) returns ``load`` of the first result; a repeat with a different
        request is refused, naming the key, rather than silently dropped."""
        self._check_request_id(request_id)
        fingerprint = self._fingerprint(operation, request)
        with self._write() as session:
            if request_id:
                prior = self._prior(session, request_id, operation, fingerprint, actor)
                if prior is not None:
                    return load(session, prior)
            result_id = create(session)
            if request_id:
                session.add(
                    IdempotencyRecord(
                        actor=actor,
                        request_id=request_id,
                        operation=operation,
                        request_sha256=fingerprint,
                        result_id=result_id,
                        created_at=utc_now(),
                    )
                )
            session.flush()
            return load(session, result_id)

    def _model(self, session: Session, name: str) -> ModelRow:
        row = session.execute(select(ModelRow).where(ModelRow.name == name)).scalar_one_or_none()
        if row is None:
            raise NotFound(f"model {name!r} is not registered")
        return row

    def _page(
        self, query: Any, id_column: Any, page_size: int, page_token: str, convert: Callable[[Session, Any], Any]
    ) -> Page:
        """Newest first; the token is opaque to callers (it encodes the last id returned). A page
        ends early (with a token) where its rows would pass its share of the message limit."""
        if not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise InvalidArgument("page_size must be between 1 and 1000")
        after = decode_page_token(page_token)
        if after is not None:
            query = query.where(id_column < after)
        budget, taken = int(self.max_artifact_bytes * PAGE_SHARE_OF_MESSAGE), 0
        with self._read() as session:
            rows = session.execute(query.order_by(id_column.desc()).limit(page_size + 1)).scalars().all()
            kept = []
            for row in rows[:page_size]:
                taken += _stored_size(row)
                if kept and taken > budget:
                    break
                kept.append(row)
            items = [convert(session, row) for row in kept]
            more = len(rows) > len(kept)
            last_id = getattr(kept[-1], id_column.key) if more else None
        return Page(items, encode_page_token(last_id) if last_id is not None else "")

    def _logged_payload(self, action: str, subject: str) -> dict[str, Any] | None:
        """The payload of the latest ``action`` event on ``subject`` (None: there is none)."""
        with self._read() as session:
            payload_json = session.execute(
                select(AuditEvent.payload_json)
                .where(AuditEvent.action == action, AuditEvent.subject == subject)
                .order_by(AuditEvent.seq.desc())
                .limit(1)
            ).scalar_one_or_none()
        return None if payload_json is None else json.loads(payload_json)
