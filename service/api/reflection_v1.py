"""Server reflection under ``grpc.reflection.v1`` as well as ``v1alpha``.

grpcio-reflection serves only ``grpc.reflection.v1alpha``; current clients (grpcurl ≥ 1.9, Postman,
grpc-java) ask for ``grpc.reflection.v1`` first. The two services have the same messages on the
wire, so the v1 method is the v1alpha servicer behind a byte-level bridge: no second implementation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names: Sequence[str], server: grpc.Server) -> None:
    """Serve reflection for ``service_names`` (and both reflection services) under v1alpha and v1."""
    names = [*service_names, reflection.SERVICE_NAME, SERVICE_NAME]
    servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)

    def info(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        parsed = (reflection_pb2.ServerReflectionRequest.FromString(raw) for raw in requests)
        for reply in servicer.ServerReflectionInfo(parsed, context):
            yield reply.SerializeToString()

    handler = grpc.stream_stream_rpc_method_handler(info)  # bytes in, bytes out: the wire is the same
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
