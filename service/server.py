"""The gRPC server: services, auth, health (NOT_SERVING until models are loaded), reflection."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy.exc import DBAPIError

from editors.toyworld import WORLD_FILE, World, reference_corpus
from service.aliases import AliasCache
from service.api.auth import AuthInterceptor
from service.api.health import Health
from service.api.malformed import TRANSPORT_HEADROOM, MalformedRequestInterceptor
from service.api.reflection_v1 import enable_reflection
from service.api.servicers import Servicers, add_to_server
from service.api.verified_keys import VerifiedKeys
from service.checks import default_suite, default_toy_suite
from service.checks.runs import HEARTBEAT_SECONDS, CheckScheduler
from service.db.migrate import require_current_schema
from service.engine.event_loop import LoopThread
from service.engine.intra_op import forward_threads, serial_thread
from service.engine.startup_heap import freeze_startup_heap
from service.gateway import HttpGateway, build_app
from service.hosting import ModelHost
from service.metrics import Metrics, MetricsInterceptor
from service.registry import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Registry
from service.registry.audit_keys import load_keyring
from service.registry.registry import check_name
from service.server_config import ModelSpec, ServerConfig

#: gRPC lets several processes share a port by default (SO_REUSEPORT): a second `scalpel serve`
#: on a taken port would silently split the traffic. Binding must fail instead.
NO_SHARED_PORT = ("grpc.so_reuseport", 0)


async def _aio_server(
    pool: futures.Executor, options: list[tuple[str, Any]], interceptors: list[Any]
) -> grpc.aio.Server:
    """The server, made on the loop that will run it (grpc.aio binds to the loop it is made on)."""
    return grpc.aio.server(migration_thread_pool=pool, options=options, interceptors=interceptors)


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_client_ca and not (config.tls_cert and config.tls_key):
        raise ValueError("tls_client_ca needs tls_cert and tls_key: client certificates are checked over TLS")
    if not (config.tls_cert and config.tls_key):
        return None
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
        root_certificates=config.tls_client_ca.read_bytes() if config.tls_client_ca else None,
        require_client_auth=config.tls_client_ca is not None,
    )


def _bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """The bound port; an OSError naming the address when it cannot be had."""
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise OSError(f"cannot listen on {address} (in use by another process?): {error}") from error


class ScalpelServer:
    """A started server; ``port`` is the bound port (useful with address ``…:0``)."""

    def __init__(self, config: ServerConfig, registry: Registry | None = None) -> None:
        self.config = config
        # the schedulers' intra-op threads, fixed now: the serial handler threads change torch's default
        config.torch_threads = config.torch_threads or forward_threads(torch.get_num_threads(), config.engine_process)
        self.registry = registry or Registry(
            config.database_url,
            max_artifact_bytes=config.max_message_bytes,
            audit_keys=load_keyring(config.audit_key_file),
        )
        require_current_schema(self.registry.engine)
        self.registry.adopt_signing("scalpel")  # a log from before signing: sign its head once
        credentials = _server_credentials(config)  # read the TLS files before anything starts
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes * TRANSPORT_HEADROOM),
            ("grpc.max_send_message_length", config.max_message_bytes),
            NO_SHARED_PORT,
        ]
        self.metrics = Metrics()
        self.metrics.watch_generation(lambda: {name: host.generation_counts for name, host in list(self.hosts.items())})
        #: one cache of verified API keys for gRPC and the HTTP gateway
        self.keys = VerifiedKeys(self.registry, config.key_cache_seconds)
        interceptors = [
            MetricsInterceptor(self.metrics),  # outermost: it counts every call, refused ones too
            MalformedRequestInterceptor(config.max_message_bytes),
            AuthInterceptor(self.keys, insecure=config.insecure),
        ]
        # grpc.aio: Generate runs on this loop, every other handler on the pool (service.api.handlers)
        pool = futures.ThreadPoolExecutor(max_workers=config.workers, initializer=serial_thread)
        self.loop = LoopThread("grpc", pool)
        self.server = self.loop.run(_aio_server(pool, options, interceptors))
        self.port = _bind(self.server, config.address, credentials)
        self.health_server = None
        if config.health_address:
            self.health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[NO_SHARED_PORT])
            self.health_port = _bind(self.health_server, config.health_address, None)
        self.metrics_port = self.metrics.serve(config.metrics_address) if config.metrics_address else None
        self.health = Health()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self.hosts: dict[str, ModelHost] = {}
        self._loading: set[str] = set()  # names being loaded at runtime
        self._loading_lock = threading.Lock()
        self.aliases: AliasCache | None = None
        self._stopping = threading.Event()
        self.gateway: HttpGateway | None = None
        if config.http_address:
            app = build_app(
                self.registry,
                self.hosts,
                self.metrics,
                insecure=config.insecure,
                keys=self.keys,
                max_body_bytes=config.max_message_bytes,
            )
            self.gateway = HttpGateway(app, config.http_address, config.tls_cert, config.tls_key)
        self.http_port = self.gateway.port if self.gateway is not None else None
        # every held run beats well inside the sweep's window, queued ones too
        beat = min(HEARTBEAT_SECONDS, config.stale_run_seconds / 5)
        self.checks = CheckScheduler(self.registry, self.hosts, self.metrics, heartbeat_seconds=beat)
        self.servicers = Servicers(self.registry, self.hosts, self.checks, self.metrics)
        self.servicers.loader = self
        self.servicers.locate_max_passes = config.locate_max_passes
        names = add_to_server(self.servicers, self.server)
        self.service_names = names
        enable_reflection([*names, health.SERVICE_NAME], self.server)
        if self.health_server is not None:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_server.start()
        self.loop.run(self.server.start())

    def load_models(self) -> None:
        """Mark runs left running by a stopped server interrupted, load every model (giving the toy
        model its default check suite if it has none), then report SERVING."""
        self.registry.interrupt_stale_runs("scalpel", self.config.stale_run_seconds)
        for name, value in self.config.models.items():
            self._serve(name, self._host(name, ModelSpec.parse(name, value)))
        gauge = self.metrics.active_version
        self.aliases = AliasCache(
            self.registry,
            unhealthy_after=self.config.unhealthy_after_seconds,
            observe=lambda model, alias, version: gauge.labels(model, alias).set(version),
            forgotten=lambda model, alias: gauge.remove(model, alias),
        )
        self.servicers.aliases = self.aliases
        for host in self.hosts.values():
            host.aliases = self.aliases
        for name in ("", *self.service_names):  # per-service names too, as generic probes ask for them
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        threading.Thread(target=self._watch_database, name="health", daemon=True).start()

    def _host(self, name: str, spec: ModelSpec, local_files_only: bool = False) -> ModelHost:
        return ModelHost(
            name,
            spec.source,
            self.registry,
            aliases=self.aliases,
            device=spec.device or self.config.device,
            dtype=spec.dtype or self.config.dtype,
            stream_interval=self.config.stream_interval,
            intra_op_threads=self.config.torch_threads,
            local_files_only=local_files_only,
            engine_process=self.config.engine_process,
            max_streams=self.config.max_streams,
            prefill_chunk_tokens=self.config.prefill_chunk_tokens,
            max_batch_rows=self.config.max_batch_rows,
            prefix_cache_bytes=self.config.prefix_cache_mb << 20,
            kv_cache_bytes=self.config.kv_cache_mb << 20,
            ride_prefill=self.config.ride_prefill,
            admit_within_steps=self.config.admit_within_steps,
        )

    def _serve(self, name: str, host: ModelHost) -> None:
        """Start serving a loaded model (its first suite if it has none)."""
        try:
            self.registry.get_suite(name)
        except NotFound:
            self.registry.set_suite(name, self._default_suite(host), "scalpel")
        self.hosts[name] = host
        self.metrics.batch_rows.labels(name).set_function(lambda: host.active_rows)
        self.metrics.row_cap.labels(name).set_function(lambda: host.row_cap)
        self.metrics.kv_held.labels(name).set_function(lambda: host.kv_held_bytes)
        self.metrics.waiting.labels(name).set_function(lambda: host.waiting)
        host.latency = self.metrics.latency(name)
        host.on_overloaded = self.metrics.refused.labels(name).inc
        host.on_engine_restart = self.metrics.engine_restarts.labels(name).inc
        self.health.set(f"scalpel.v1.models/{name}", health_pb2.HealthCheckResponse.SERVING)

    def load_model(self, name: str, spec: ModelSpec, actor: str) -> ModelHost:
        """Load and serve ``name`` while the server runs. The weights load on the calling thread
        (serially: see service.engine.intra_op), under no lock the other models' schedulers take, so the
        models already served keep serving meanwhile."""
        check_name("model", name)
        if spec.missing_directory:
            raise InvalidArgument(f"no model directory at {spec.source} (a hub id looks like org/name)")
        device = spec.device or self.config.device
        try:
            torch.device(device)
        except (RuntimeError, ValueError) as error:
            raise InvalidArgument(f"device {device!r} is not a device name: {str(error).splitlines()[0]}") from None
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError, NotImplementedError) as error:  # a CPU build asserts on CUDA
            raise FailedPrecondition(
                f"device {device!r} is not available on this replica ({str(error).splitlines()[0]}); "
                "load the model on a device it has, or on a replica that has this one"
            ) from None
        with self._loading_lock:
            if name in self.hosts or name in self._loading:
                raise AlreadyExists(f"model {name!r} is already served (or loading) here")
            self._loading.add(name)
        try:
            try:
                host = self._host(name, spec, local_files_only=not self.config.hub_downloads)
            except (OSError, ValueError, RuntimeError, KeyError) as error:  # what a bad checkpoint raises
                reason = str(error).splitlines()[0]
                raise InvalidArgument(f"cannot load model {name!r} from {spec.source}: {reason}") from None
            self._serve(name, host)
        finally:
            with self._loading_lock:
                self._loading.discard(name)
        payload = {"source": spec.source, "device": str(host.device), "dtype": host.dtype_name}
        self.registry.record_serving(name, "model.loaded", actor, payload)
        return host

    def unload_model(self, name: str, actor: str, force: bool = False) -> None:
        """Stop serving ``name`` and free its weights. Refused while it has requests in flight
        (streams, queued or running jobs) unless ``force``, which ends them with UNAVAILABLE."""
        host = self.hosts.get(name)
        if host is None:
            raise NotFound(f"model {name!r} is not served here")
        busy = host.requests
        if busy and not force:
            raise FailedPrecondition(
                f"model {name!r} is serving {busy} requests; retry when they end, or force it to cancel them"
            )
        self.health.set(f"scalpel.v1.models/{name}", health_pb2.HealthCheckResponse.NOT_SERVING)
        del self.hosts[name]
        self.metrics.forget_model(name)
        host.close()
        self.registry.record_serving(name, "model.unloaded", actor, {"forced": force, "cancelled": busy})

    def _watch_database(self) -> None:
        """NOT_SERVING while the database has been unreachable longer than configured, SERVING again
        after; and, every few seconds, interrupt check runs whose replica stopped sending heartbeats."""
        serving = True
        sweeps = 0
        while not self._stopping.wait(1.0):
            sweeps += 1
            if sweeps % 5 == 0:
                with contextlib.suppress(DBAPIError):  # the database is away; the health below reports it
                    self.registry.interrupt_stale_runs(f"scalpel@{self.checks.replica}", self.config.stale_run_seconds)
            for host in list(self.hosts.values()):
                host.revive_engine()
            healthy = self.aliases is not None and self.aliases.healthy
            if healthy != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ("", *self.service_names):
                    self.health.set(name, status)
                serving = healthy

    @staticmethod
    def _default_suite(host: ModelHost) -> dict[str, Any]:
        """A model's first suite: a toy-world model's own (the toy model, its successor: a directory
        with a ``world.json``), else the generic one over the model's ``reference_corpus.txt`` (a
        built-in English corpus when it ships none)."""
        if (host.model_dir / WORLD_FILE).is_file():
            return default_toy_suite(World.load(host.model_dir / WORLD_FILE), reference_corpus(host.model_dir))
        corpus = host.model_dir / "reference_corpus.txt"
        return default_suite(corpus.read_text().splitlines() if corpus.is_file() else None)

    def stop(self, grace: float = 5.0) -> None:
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        if self.aliases is not None:
            self.aliases.close()
        self.loop.run(self.server.stop(grace))
        self.loop.close()
        if self.gateway is not None:
            self.gateway.stop()
        for host in self.hosts.values():
            host.close()
        if self.health_server is not None:
            self.health_server.stop(0)
        self.checks.shutdown()
        self.metrics.stop()
        self.registry.engine.dispose()


def serve(config: ServerConfig) -> None:
    """Run until SIGTERM / SIGINT, then drain in-flight calls and stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the start-up schema check is not news
    cores = serial_thread()  # the schedulers' threads get the cores
    config.torch_threads = config.torch_threads or forward_threads(cores, config.engine_process)
    server = ScalpelServer(config)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    server.load_models()
    freeze_startup_heap()  # the models and imports, out of every later full collection's walk
    print(
        f"scalpel serving {', '.join(config.models)} on port {server.port}"
        f"{f'; metrics on port {server.metrics_port}' if server.metrics_port else ''}"
        f"{f'; OpenAI-compatible HTTP on port {server.http_port}' if server.http_port else ''}"
        f"{' (INSECURE: no authentication)' if config.insecure else ''}",
        flush=True,
    )
    stopping.wait()
    server.stop()
