"""Prometheus metrics, served on their own HTTP port.

The usual gRPC server family of go-grpc-prometheus (``grpc_server_started_total``,
``grpc_server_handled_total``, ``grpc_server_msg_received_total``, ``grpc_server_msg_sent_total``,
``grpc_server_handling_seconds``) by service and method (and code, where it applies), plus domain
metrics labelled by model: tokens generated (by version), the version each alias points at (as
every replica's alias cache knows it), and check runs by result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "RPC handling time on the server",
            ["grpc_service", "grpc_method"],
            registry=self.registry,
            # up to 10 minutes: ROME, derivations and whole generations take well over 10 s
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server", labels, registry=self.registry
        )
        self.received = Counter(
            "grpc_server_msg_received_total", "Messages received from clients", labels, registry=self.registry
        )
        self.sent = Counter("grpc_server_msg_sent_total", "Messages sent to clients", labels, registry=self.registry)
        self.tokens = Counter(
            "scalpel_tokens_generated_total", "Tokens generated", ["model", "version"], registry=self.registry
        )
        self.active_version = Gauge(
            "scalpel_active_version", "Version an alias points at", ["model", "alias"], registry=self.registry
        )
        self.check_runs = Counter(
            "scalpel_check_runs_total", "Finished check runs", ["model", "result"], registry=self.registry
        )
        self._http: Any = None

    def serve(self, address: str) -> int:
        """Start the /metrics endpoint on ``host:port`` (port 0 picks one); returns the port."""
        host, _, port = address.rpartition(":")
        self._http, _ = start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)
        return self._http.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every RPC by service, method and final status code."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        metrics = self.metrics

        def observe(context: grpc.ServicerContext, started: float) -> None:
            code = context.code() or grpc.StatusCode.OK
            metrics.handled.labels(service, method, code.name).inc()
            metrics.seconds.labels(service, method).observe(time.perf_counter() - started)

        if handler.unary_unary:
            inner = handler.unary_unary
            kind = ("unary", service, method)

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                started = time.perf_counter()
                metrics.started.labels(*kind).inc()
                metrics.received.labels(*kind).inc()
                try:
                    reply = inner(request, context)
                    metrics.sent.labels(*kind).inc()
                    return reply
                finally:
                    observe(context, started)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream
            kind = ("server_stream", service, method)

            def stream(request: Any, context: grpc.ServicerContext) -> Any:
                started = time.perf_counter()
                metrics.started.labels(*kind).inc()
                metrics.received.labels(*kind).inc()
                sent = metrics.sent.labels(*kind)
                try:
                    for reply in inner_stream(request, context):
                        sent.inc()
                        yield reply
                finally:
                    observe(context, started)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
