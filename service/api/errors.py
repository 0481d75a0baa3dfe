"""Registry, edit and database errors → gRPC status codes, with a message a user can act on.

Anything unexpected is logged with an incident id and answered INTERNAL naming it: no internals leak."""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import psycopg
from sqlalchemy.exc import DataError, InterfaceError, OperationalError

from editors import InvalidEditError
from editors.errors import Cancelled, NotExportable
from service.registry import RegistryError
from service.scheduler import SchedulerClosed

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


@contextlib.contextmanager
def errors_as_status(context: grpc.ServicerContext) -> Iterator[None]:
    """Registry and edit errors become their status codes with their message. Anything unexpected
    is logged with an incident id and becomes INTERNAL naming that id: no internals leak."""
    try:
        yield
    except RegistryError as exc:
        context.abort(_CODES.get(exc.code, grpc.StatusCode.INTERNAL), _brief(str(exc)))
    except InvalidEditError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, _brief(str(exc)))
    except NotExportable as exc:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, _brief(f"cannot export this version: {exc}"))
    except RecursionError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a value in the request is nested too deeply")
    except SchedulerClosed as exc:
        context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    except Cancelled as exc:
        context.abort(grpc.StatusCode.CANCELLED, f"stopped: the call was cancelled or its deadline passed ({exc})")
    except (OperationalError, InterfaceError) as exc:
        if not _is_connection_loss(exc):
            _abort_internal(context)
        context.abort(grpc.StatusCode.UNAVAILABLE, "the database is unreachable; retry shortly")
    except DataError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a value is out of range for the database: {exc.orig}")
    except Exception:
        _abort_internal(context)


def _abort_internal(context: grpc.ServicerContext) -> None:
    """INTERNAL naming an incident id; the traceback of the exception being handled goes to the log."""
    incident = secrets.token_hex(4)
    _LOG.exception("incident %s", incident)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error, incident {incident} (see the server log)")


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


def abort_on_errors_stream(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with errors_as_status(context):
            yield from method(self, request, context)

    return wrapper  # type: ignore[return-value]
