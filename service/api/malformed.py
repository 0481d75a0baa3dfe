"""Requests whose bytes do not parse are INVALID_ARGUMENT, not INTERNAL.

gRPC deserialises a request before any handler runs, and answers a parse failure (corrupt wire
bytes, invalid UTF-8 in a string field) with INTERNAL. This interceptor swaps in a deserialiser
that hands the failure to the handler instead, which then aborts with INVALID_ARGUMENT naming the
message type, so the metrics interceptor around it counts the call like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class _Malformed:
    """Stands in for a request that did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError, UnicodeDecodeError, …: the bytes are the client's fault
            return _Malformed(error)

    return parse


def _refuse(context: grpc.ServicerContext, request: _Malformed, method: str) -> None:
    context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request to {method} does not parse as its protobuf message ({type(request.error).__name__}); "
        "send a well-formed message (strings must be valid UTF-8)",
    )


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = details.method
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Malformed):
                    _refuse(context, request, method)
                return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, parse, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Malformed):
                    _refuse(context, request, method)
                yield from inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(stream, parse, handler.response_serializer)
        return handler
