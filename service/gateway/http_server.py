"""The gateway's HTTP server: uvicorn on a thread of the serving process, beside gRPC."""

from __future__ import annotations

import threading
from pathlib import Path

import uvicorn
from fastapi import FastAPI

#: How long start-up may take before the gateway is declared broken (seconds).
STARTUP_TIMEOUT_S = 30.0


class HttpGateway:
    """Serve ``app`` on ``address`` (``host:port``; port 0 picks one: see :attr:`port`), over TLS
    when given a certificate and key."""

    def __init__(self, app: FastAPI, address: str, tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
        host, _, port = address.rpartition(":")
        config = uvicorn.Config(
            app,
            host=host or "127.0.0.1",
            port=int(port),
            log_level="warning",
            access_log=False,  # scalpel.access has one line per request
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="http-gateway", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(STARTUP_TIMEOUT_S * 20)):
            if self._server.started or not self._thread.is_alive():
                break
            deadline.wait(0.05)
        if not self._server.started:
            raise OSError(f"the HTTP gateway could not listen on {address} (in use by another process?)")
        self.port: int = self._server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
