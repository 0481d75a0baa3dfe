"""Requests that do not parse, or are too large, are refused by the handler, so they are counted.

gRPC deserialises a request before any handler runs. It answers a parse failure (corrupt wire
bytes, invalid UTF-8 in a string field) with INTERNAL, and a message over the transport's size
limit with RESOURCE_EXHAUSTED before any interceptor sees the call, so neither reached
``grpc_server_handled_total``. This interceptor swaps in a deserialiser that hands either failure
to the handler instead, which aborts with INVALID_ARGUMENT (naming the message type) or
RESOURCE_EXHAUSTED (naming the limit), and the metrics interceptor around it counts the call like
any other. The transport's own limit is set to ``TRANSPORT_HEADROOM`` times ours, so only a
request beyond that is still refused (uncounted) by gRPC itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from service.api.handlers import Behaviour, WrappingInterceptor, rewrapped

TRANSPORT_HEADROOM = 4


class _Refused:
    """Stands in for a request that did not parse or was over the size limit."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message


def _guarded(deserializer: Callable[[bytes], Any], method: str, max_bytes: int) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        if len(data) > max_bytes:
            return _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request to {method} is {len(data)} bytes, larger than the server's limit of {max_bytes} "
                "(server option max_message_bytes); send less per call",
            )
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError, UnicodeDecodeError, …: the bytes are the client's fault
            return _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request to {method} does not parse as its protobuf message ({type(error).__name__}); "
                "send a well-formed message (strings must be valid UTF-8)",
            )

    return parse


class _RefuseMalformed:
    """Aborts a call whose request stands in for one that did not parse (see the module docstring)."""

    @staticmethod
    def unary(inner: Behaviour) -> Behaviour:
        def run(request: Any, context: Any) -> Any:
            if isinstance(request, _Refused):
                context.abort(request.code, request.message)
            return inner(request, context)

        return run

    @staticmethod
    def stream(inner: Behaviour) -> Behaviour:
        def run(request: Any, context: Any) -> Any:
            if isinstance(request, _Refused):
                context.abort(request.code, request.message)
            yield from inner(request, context)

        return run

    @staticmethod
    def async_stream(inner: Behaviour) -> Behaviour:
        async def run(request: Any, context: Any) -> Any:
            if isinstance(request, _Refused):
                await context.abort(request.code, request.message)
            async for reply in inner(request, context):
                yield reply

        return run


class MalformedRequestInterceptor(WrappingInterceptor):
    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.request_deserializer is None or not (handler.unary_unary or handler.unary_stream):
            return handler
        parse = _guarded(handler.request_deserializer, method, self.max_bytes)
        return rewrapped(handler, _RefuseMalformed(), parse)
