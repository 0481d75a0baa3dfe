"""grpc.health.v1 with ``List`` (grpcio-health-checking advertises it but leaves it UNIMPLEMENTED)."""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health, health_pb2


class Health(health.HealthServicer):
    """The stock servicer (Check, Watch, graceful shutdown) plus ``List`` of every status set."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._statuses_lock = threading.Lock()

    def set(self, service: str, status: int) -> None:
        with self._statuses_lock:
            self._statuses[service] = status
        super().set(service, status)

    def enter_graceful_shutdown(self) -> None:
        with self._statuses_lock:
            for service in self._statuses:
                self._statuses[service] = health_pb2.HealthCheckResponse.NOT_SERVING
        super().enter_graceful_shutdown()

    def List(
        self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthListResponse:
        with self._statuses_lock:
            statuses = dict(self._statuses)
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses.items()}
        )
