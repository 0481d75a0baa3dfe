"""API-key authentication and role checks, as a gRPC server interceptor.

Every RPC has a required role (``REQUIRED_ROLES``); a key's role must be at least that
(reader < editor < approver < admin). Callers send ``authorization: Bearer sk_…``. With
``insecure=True`` (the explicit ``--insecure`` flag) every call runs as ``local`` with the
admin role. The caller's identity is available to handlers through :func:`current_principal`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from service.api.verified_keys import DatabaseUnreachable, VerifiedKeys
from service.metrics import note_caller
from service.registry.registry import ROLES

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
    """Each call's key, checked through :class:`VerifiedKeys` (a verified key is trusted for
    ``key_cache_seconds``; a revocation through this replica counts at once)."""

    def __init__(self, keys: VerifiedKeys, insecure: bool = False) -> None:
        self.keys = keys
        self.insecure = insecure

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
        try:
            key = self.keys.verify(header.removeprefix("Bearer ").strip())
        except DatabaseUnreachable as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        if key is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key")
        if _rank(key.role) < _rank(required):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this call needs role {required!r}; key {key.name!r} has {key.role!r}",
            )
        return Principal(key.name, key.role)


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
