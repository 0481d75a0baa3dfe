"""Registry, edit and database errors → gRPC status codes, with a message a user can act on.

Anything unexpected is logged with an incident id and answered INTERNAL naming it: no internals leak."""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import grpc
import psycopg
from sqlalchemy.exc import DataError, InterfaceError, OperationalError

from editors import InvalidEditError
from editors.errors import Cancelled, NotExportable
from service.api.handlers import CallAborted
from service.engine.scheduler import Overloaded, SchedulerClosed
from service.registry import RegistryError

F = TypeVar("F", bound=Callable[..., Any])


_LOG = logging.getLogger(__name__)


_CODES = {
    name: getattr(grpc.StatusCode, name)
    for name in (
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "ABORTED",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "DATA_LOSS",
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
    )
}


def _status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status an exception ends a call with. Registry and edit errors keep their message;
    anything unexpected is logged (call it while handling ``exc``) with an incident id, and the
    caller sees only that id: no internals leak."""
    if isinstance(exc, RegistryError):
        return _CODES.get(exc.code, grpc.StatusCode.INTERNAL), _brief(str(exc))
    if isinstance(exc, InvalidEditError):
        return grpc.StatusCode.INVALID_ARGUMENT, _brief(str(exc))
    if isinstance(exc, NotExportable):
        return grpc.StatusCode.FAILED_PRECONDITION, _brief(f"cannot export this version: {exc}")
    if isinstance(exc, RecursionError):
        return grpc.StatusCode.INVALID_ARGUMENT, "a value in the request is nested too deeply"
    if isinstance(exc, SchedulerClosed | Overloaded):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, Cancelled):
        return grpc.StatusCode.CANCELLED, f"stopped: the call was cancelled or its deadline passed ({exc})"
    if isinstance(exc, (OperationalError, InterfaceError)) and _is_connection_loss(exc):
        return grpc.StatusCode.UNAVAILABLE, "the database is unreachable; retry shortly"
    if isinstance(exc, DataError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"a value is out of range for the database: {exc.orig}"
    incident = secrets.token_hex(4)
    _LOG.exception("incident %s", incident)
    return grpc.StatusCode.INTERNAL, f"internal error, incident {incident} (see the server log)"


@contextlib.contextmanager
def errors_as_status(context: grpc.ServicerContext) -> Iterator[None]:
    """Errors raised in the block end the call with their status (:func:`_status`)."""
    try:
        yield
    except CallAborted:
        raise  # an abort already under way
    except Exception as exc:
        context.abort(*_status(exc))


def _is_connection_loss(exc: OperationalError | InterfaceError) -> bool:
    """Whether a database error means the database is away (worth a retry), not a bad statement."""
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if isinstance(exc.orig, psycopg.OperationalError):
        return True
    message = str(exc.orig).lower()
    return any(sign in message for sign in ("database is locked", "unable to open", "disk i/o error"))


#: Status details stay far below gRPC's 8 KiB default metadata limit, whatever a message quotes.
MAX_DETAILS_CHARS = 1000


def _brief(message: str) -> str:
    return message if len(message) <= MAX_DETAILS_CHARS else message[:MAX_DETAILS_CHARS] + "…"


def abort_on_errors(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with errors_as_status(context):
            return method(self, request, context)

    return wrapper  # type: ignore[return-value]


def abort_on_errors_async_stream(method: F) -> F:
    """:func:`abort_on_errors_stream` for an ``async`` streaming handler."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for reply in method(self, request, context):
                yield reply
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await context.abort(*_status(exc))

    return wrapper  # type: ignore[return-value]


def abort_on_errors_stream(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with errors_as_status(context):
            yield from method(self, request, context)

    return wrapper  # type: ignore[return-value]
