"""API-key authentication and role checks, as a gRPC server interceptor.

Every RPC has a required role (``REQUIRED_ROLES``); a key's role must be at least that
(reader < editor < approver < admin). Callers send ``authorization: Bearer sk_…``. With
``insecure=True`` (the explicit ``--insecure`` flag) every call runs as ``local`` with the
admin role. The caller's identity is available to handlers through :func:`current_principal`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy.exc import DBAPIError

from service.metrics import note_caller
from service.registry import Registry
from service.registry.registry import ROLES, KeyInfo

#: Minimum role per RPC (method name after the service); unlisted RPCs need "admin".
REQUIRED_ROLES: dict[str, str] = {
    "ListModels": "reader",
    "GetModel": "reader",
    "LoadModel": "admin",
    "UnloadModel": "admin",
    "GetEdit": "reader",
    "CreateEdit": "editor",
    "DeriveSteering": "editor",
    "ComputeRome": "editor",
    "ComputeRomeStream": "editor",
    "ComputeMemit": "editor",
    "DiscoverCircuit": "editor",
    "GetVersion": "reader",
    "ListVersions": "reader",
    "CompareVersions": "reader",
    "ExportVersion": "editor",
    "CreateVersion": "editor",
    "GetAlias": "reader",
    "ListAliasHistory": "reader",
    "Promote": "approver",
    "Rollback": "approver",
    "DeleteAlias": "approver",
    "Generate": "reader",
    "Score": "reader",
    "GetSuite": "reader",
    "GetRun": "reader",
    "ListRuns": "reader",
    "ListEdits": "reader",
    "ListAliases": "reader",
    "WatchRun": "reader",
    "StartRun": "editor",
    "SetSuite": "approver",
    "ListAuditEvents": "reader",
    "VerifyAudit": "reader",
    "CreateKey": "admin",
    "ListKeys": "admin",
    "RevokeKey": "admin",
}
#: Services open to anyone (load balancers and tools need them unauthenticated).
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


_principal: ContextVar[Principal | None] = ContextVar("scalpel_principal", default=None)


def current_principal() -> Principal:
    principal = _principal.get()
    if principal is None:  # only reachable for public services, which never ask
        raise RuntimeError("no authenticated principal in this context")
    return principal


def _rank(role: str) -> int:
    return ROLES.index(role)


class AuthInterceptor(grpc.ServerInterceptor):
    """Keys are checked against the database, and a key that passed is trusted for
    ``key_cache_seconds`` (0: every call is checked). A revocation through this replica takes
    effect on the next call; one made elsewhere (another replica, ``scalpel keys revoke``) within
    ``key_cache_seconds``. While the database is unreachable, a key verified in the last
    ``outage_grace_seconds`` is still accepted, so a replica keeps serving through a database
    restart.

    Why a cache at all: the check is a database read on every call, a fifth of the serving
    process's time per short request (BENCHMARKS.md), and per-request work in that one process is
    what caps many concurrent streams on a GPU."""

    def __init__(
        self,
        registry: Registry,
        insecure: bool = False,
        outage_grace_seconds: float = 300.0,
        key_cache_seconds: float = 1.0,
    ) -> None:
        if not key_cache_seconds >= 0:
            raise ValueError(f"key_cache_seconds must be 0 (check every call) or more, got {key_cache_seconds}")
        self.registry = registry
        self.insecure = insecure
        self.outage_grace_seconds = outage_grace_seconds
        self.key_cache_seconds = key_cache_seconds
        #: SHA-256 of a secret → its key, when it was last verified, and the registry's revocation
        #: count read before that verification
        self._verified: dict[str, tuple[KeyInfo, float, int]] = {}

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(PUBLIC_PREFIXES):
            return handler
        required = REQUIRED_ROLES.get(details.method.rsplit("/", 1)[-1], "admin")
        return _wrap(handler, lambda context: self._authenticate(context, required))

    def _authenticate(self, context: grpc.ServicerContext, required: str) -> Principal:
        if self.insecure:
            return Principal("local", "admin")
        metadata = dict(context.invocation_metadata())
        header = metadata.get("authorization", "")
        if not header.startswith("Bearer "):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "send 'authorization: Bearer <api key>'")
        secret = header.removeprefix("Bearer ").strip()
        fingerprint = hashlib.sha256(secret.encode()).hexdigest()
        key = self._cached(fingerprint)
        if key is None:
            key = self._verify(context, secret, fingerprint)
        if key is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key")
        if _rank(key.role) < _rank(required):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this call needs role {required!r}; key {key.name!r} has {key.role!r}",
            )
        return Principal(key.name, key.role)

    def _cached(self, fingerprint: str) -> KeyInfo | None:
        known = self._verified.get(fingerprint)
        if known is None or known[2] != self.registry.revocations:
            return None
        return known[0] if time.monotonic() - known[1] < self.key_cache_seconds else None

    def _verify(self, context: grpc.ServicerContext, secret: str, fingerprint: str) -> KeyInfo | None:
        revocations = self.registry.revocations  # read first: a revocation during the check makes this entry stale
        try:
            key = self.registry.verify_key(secret)
        except DBAPIError:
            known = self._verified.get(fingerprint)
            if known is None or time.monotonic() - known[1] > self.outage_grace_seconds:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the database is unreachable; retry shortly")
            return known[0]
        if key is None:
            self._verified.pop(fingerprint, None)
        else:
            self._verified[fingerprint] = (key, time.monotonic(), revocations)
        return key


def _wrap(handler: grpc.RpcMethodHandler, authenticate: Callable[[grpc.ServicerContext], Principal]) -> Any:
    def guard(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            principal = authenticate(context)
            note_caller(principal.name)
            token = _principal.set(principal)
            try:
                return behaviour(request, context)
            finally:
                _principal.reset(token)

        return run

    def guard_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            principal = authenticate(context)
            note_caller(principal.name)
            token = _principal.set(principal)
            try:
                yield from behaviour(request, context)
            finally:
                _principal.reset(token)

        return run

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            guard(handler.unary_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            guard_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
        )
    return handler
