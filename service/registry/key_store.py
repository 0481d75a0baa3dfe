"""API keys: the secret is shown once and stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import Row, select

from service.db.models import (
    ApiKey,
)
from service.registry import audit
from service.registry.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
)
from service.registry.infos import (
    KeyInfo,
)
from service.registry.unit_of_work import (
    ROLES,
    Page,
    UnitOfWork,
    check_name,
    utc_now,
)

_KEY_COLUMNS = (
    ApiKey.name,
    ApiKey.prefix,
    ApiKey.role,
    ApiKey.created_by,
    ApiKey.created_at,
    ApiKey.revoked_at,
    ApiKey.secret_hash,
)


class KeyStore(UnitOfWork):
    """API keys: the secret is shown once and stored only as a hash."""

    #: Keys revoked through this object since it was made: a cache of verified keys made before
    #: a change to it is stale (``service.api.verified_keys``).
    revocations: int = 0

    @staticmethod
    def _key_info(row: ApiKey | Row[Any]) -> KeyInfo:
        return KeyInfo(row.name, row.prefix, row.role, row.created_by, row.created_at, row.revoked_at)

    @staticmethod
    def _secret_hash(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    def create_key(self, name: str, role: str, actor: str) -> tuple[KeyInfo, str]:
        """A new API key; the secret is returned once and stored only as a hash."""
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}")
        check_name("key", name)
        prefix = secrets.token_hex(4)
        secret = f"sk_{prefix}_{secrets.token_urlsafe(32)}"
        with self._write() as session:
            if session.execute(select(ApiKey.id).where(ApiKey.name == name)).first():
                raise AlreadyExists(f"key {name!r} already exists")
            row = ApiKey(
                name=name,
                prefix=prefix,
                secret_hash=self._secret_hash(secret),
                role=role,
                created_by=actor,
                created_at=utc_now(),
            )
            session.add(row)
            audit.append(session, actor, "key.created", f"keys/{name}", {"role": role, "prefix": prefix})
            session.flush()
            return self._key_info(row), secret

    def verify_key(self, secret: str) -> KeyInfo | None:
        """The key's info if ``secret`` is a live key, else None."""
        if not isinstance(secret, str) or not secret.startswith("sk_"):
            return None
        prefix = secret[3:].partition("_")[0]
        with self._read_rows() as connection:  # on every call's path: columns, not an ORM session
            row = connection.execute(select(*_KEY_COLUMNS).where(ApiKey.prefix == prefix)).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        if not secrets.compare_digest(row.secret_hash, self._secret_hash(secret)):
            return None
        return self._key_info(row)  # a row of the key's columns reads like the ORM object

    def revoke_key(self, name: str, actor: str) -> KeyInfo:
        with self._write() as session:
            row = session.execute(select(ApiKey).where(ApiKey.name == name)).scalar_one_or_none()
            if row is None:
                raise NotFound(f"key {name!r} does not exist")
            if row.revoked_at is None:
                row.revoked_at = utc_now()
                audit.append(session, actor, "key.revoked", f"keys/{name}", {"prefix": row.prefix})
            info = self._key_info(row)
        self.revocations += 1  # after the commit: a verification that read the old count re-checks
        return info

    def list_keys(self, page_size: int = 50, page_token: str = "") -> Page:
        return self._page(select(ApiKey), ApiKey.id, page_size, page_token, lambda _, r: self._key_info(r))
