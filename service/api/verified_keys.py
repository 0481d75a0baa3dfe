"""API keys as this replica last verified them: one database read per key per
``cache_seconds``, shared by the gRPC interceptor and the HTTP gateway.

A key that passed is trusted for ``cache_seconds`` (0: the database is read on every call). A
revocation through this replica's registry makes every entry stale at once, so the key is refused
on its next call; one made elsewhere (another replica, ``scalpel keys revoke``) lands within
``cache_seconds``. While the database is unreachable, a key verified in the last
``outage_grace_seconds`` is still accepted, so a replica keeps serving through a restart.

Why a cache at all: the check was a database read on every call, a quarter of the serving
process's CPU on short requests (``bench/request_cpu.py``), and that process's per-request work
is what caps many concurrent streams on a GPU (BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import time

from sqlalchemy.exc import DBAPIError

from service.registry import Registry
from service.registry.registry import KeyInfo


class DatabaseUnreachable(Exception):
    """The key could not be checked: the database is down and the key was not verified recently."""


class VerifiedKeys:
    def __init__(self, registry: Registry, cache_seconds: float = 1.0, outage_grace_seconds: float = 300.0) -> None:
        if not cache_seconds >= 0:
            raise ValueError(f"key_cache_seconds must be 0 (check every call) or more, got {cache_seconds}")
        self.registry = registry
        self.cache_seconds = cache_seconds
        self.outage_grace_seconds = outage_grace_seconds
        #: SHA-256 of a secret → its key, when it was last verified, and the registry's revocation
        #: count read before that verification
        self._verified: dict[str, tuple[KeyInfo, float, int]] = {}

    def fresh(self, secret: str) -> bool:
        """Whether :meth:`verify` would answer ``secret`` from the cache, without the database."""
        return self._fresh(self._verified.get(_fingerprint(secret)))

    def _fresh(self, known: tuple[KeyInfo, float, int] | None) -> bool:
        return (
            known is not None
            and known[2] == self.registry.revocations
            and time.monotonic() - known[1] < self.cache_seconds
        )

    def verify(self, secret: str) -> KeyInfo | None:
        """The live key ``secret`` names, or None; :class:`DatabaseUnreachable` when it cannot tell."""
        fingerprint = _fingerprint(secret)
        known = self._verified.get(fingerprint)
        if known is not None and self._fresh(known):
            return known[0]
        revocations = self.registry.revocations  # read first: a revocation during the check makes it stale
        try:
            key = self.registry.verify_key(secret)
        except DBAPIError:
            if known is None or time.monotonic() - known[1] > self.outage_grace_seconds:
                raise DatabaseUnreachable("the database is unreachable; retry shortly") from None
            return known[0]
        if key is None:
            self._verified.pop(fingerprint, None)
        else:
            self._verified[fingerprint] = (key, time.monotonic(), revocations)
        return key


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
