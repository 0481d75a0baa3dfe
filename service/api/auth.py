"""API-key authentication and role checks, as a gRPC server interceptor.

Every RPC has a required role (``REQUIRED_ROLES``); a key's role must be at least that
(reader < editor < approver < admin). Callers send ``authorization: Bearer sk_…``. With
``insecure=True`` (the explicit ``--insecure`` flag) every call runs as ``local`` with the
admin role. The caller's identity is available to handlers through :func:`current_principal`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from service.api.handlers import Behaviour, CallAborted, WrappingInterceptor, rewrapped
from service.api.verified_keys import DatabaseUnreachable, VerifiedKeys
from service.metrics import note_caller
from service.registry.registry import ROLES

#: Minimum role per RPC (method name after the service); unlisted RPCs need "admin".
REQUIRED_ROLES: dict[str, str] = {
    "ListModels": "reader",
    "GetModel": "reader",
    "LoadModel": "admin",
    "UnloadModel": "admin",
    "RegisterSuccessor": "admin",
    "GetEdit": "reader",
    "CreateEdit": "editor",
    "DeriveSteering": "editor",
    "ComputeRome": "editor",
    "ComputeRomeStream": "editor",
    "ComputeMemit": "editor",
    "DiscoverCircuit": "editor",
    "CreateSae": "editor",
    "UploadChunk": "editor",
    "GetSae": "reader",
    "ListSaes": "reader",
    "InspectFeatures": "reader",
    "GetFeature": "reader",
    "SearchFeatures": "reader",
    "GetVersion": "reader",
    "ListVersions": "reader",
    "CompareVersions": "reader",
    "ExportVersion": "editor",
    "CreateVersion": "editor",
    "RebaseVersion": "editor",
    "GetRebase": "reader",
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


class AuthInterceptor(WrappingInterceptor):
    """Each call's key, checked through :class:`VerifiedKeys` (a verified key is trusted for
    ``key_cache_seconds``; a revocation through this replica counts at once)."""

    def __init__(self, keys: VerifiedKeys, insecure: bool = False) -> None:
        super().__init__()
        self.keys = keys
        self.insecure = insecure

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if method.startswith(PUBLIC_PREFIXES):
            return handler
        return rewrapped(handler, _Guard(self, REQUIRED_ROLES.get(method.rsplit("/", 1)[-1], "admin")))

    def secret(self, context: Any) -> str | None:
        """The call's API key (None with ``insecure``); :class:`CallAborted` when it sent none."""
        if self.insecure:
            return None
        header = dict(context.invocation_metadata()).get("authorization", "")
        if not header.startswith("Bearer "):
            raise CallAborted(grpc.StatusCode.UNAUTHENTICATED, "send 'authorization: Bearer <api key>'")
        return header.removeprefix("Bearer ").strip()

    def verify(self, secret: str | None, required: str) -> Principal:
        """The principal ``secret`` names, if it may make a call that needs ``required``; else
        :class:`CallAborted`. Reads the database unless the key was verified recently."""
        if secret is None:
            return Principal("local", "admin")
        try:
            key = self.keys.verify(secret)
        except DatabaseUnreachable as error:
            raise CallAborted(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        if key is None:
            raise CallAborted(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key")
        if _rank(key.role) < _rank(required):
            raise CallAborted(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this call needs role {required!r}; key {key.name!r} has {key.role!r}",
            )
        return Principal(key.name, key.role)


class _Guard:
    """Runs a call as its authenticated principal (:func:`current_principal`), or refuses it."""

    def __init__(self, auth: AuthInterceptor, required: str) -> None:
        self.auth = auth
        self.required = required

    def _principal(self, context: Any) -> Principal:
        """On a worker thread: a refusal raises :class:`CallAborted`, which ends the call."""
        return self.auth.verify(self.auth.secret(context), self.required)

    def unary(self, inner: Behaviour) -> Behaviour:
        def run(request: Any, context: Any) -> Any:
            with _as(self._principal(context)):
                return inner(request, context)

        return run

    def stream(self, inner: Behaviour) -> Behaviour:
        def run(request: Any, context: Any) -> Any:
            with _as(self._principal(context)):
                yield from inner(request, context)

        return run

    def async_stream(self, inner: Behaviour) -> Behaviour:
        async def run(request: Any, context: Any) -> Any:
            try:
                secret = self.auth.secret(context)
                if secret is None or self.auth.keys.fresh(secret):
                    principal = self.auth.verify(secret, self.required)
                else:  # the database is read on a worker thread: never on the loop that serves every stream
                    loop = asyncio.get_running_loop()
                    principal = await loop.run_in_executor(None, self.auth.verify, secret, self.required)
            except CallAborted as refused:
                await context.abort(refused.code, refused.details)
            with _as(principal):
                async for reply in inner(request, context):
                    yield reply

        return run


@contextlib.contextmanager
def _as(principal: Principal) -> Iterator[None]:
    note_caller(principal.name)
    token = _principal.set(principal)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # a stream finalised outside its call's task
            _principal.reset(token)
