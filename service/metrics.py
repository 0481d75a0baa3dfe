"""Prometheus metrics, served on their own HTTP port.

The usual gRPC server family of go-grpc-prometheus (``grpc_server_started_total``,
``grpc_server_handled_total``, ``grpc_server_msg_received_total``, ``grpc_server_msg_sent_total``,
``grpc_server_handling_seconds``) by service and method (and code, where it applies), plus domain
metrics labelled by model: tokens generated (by version), the version each alias points at (as
every replica's alias cache knows it), check runs by result, and the generation streams'
latencies (time to first token, time per output token, wait in the scheduler's queue: see
:mod:`service.engine.stream_timing`) with the prompt tokens prefilled and the streams waiting to join.
The registry is the server's own, so it also carries what prometheus-client's default one
would: the serving process's CPU, memory and file descriptors (``process_*``), ``python_info``,
and the garbage collector's collections by generation (``python_gc_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from service.api.handlers import (
    Behaviour,
    CallContext,
    WrappingInterceptor,
    iterate_on_worker,
    rewrapped,
    run_on_worker,
)

if TYPE_CHECKING:
    from service.hosting import GenerationCounts

#: Seconds: time to first token and queue waits (a stream behind a long queue waits seconds).
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40, 80)
#: Seconds per token after the first.
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
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
        self.batch_rows = Gauge(
            "scalpel_generation_rows", "Rows in the model's decode batch", ["model"], registry=self.registry
        )
        self.row_cap = Gauge(
            "scalpel_generation_row_cap",
            "Rows the model's decode batch may hold now: max_batch_rows, or fewer since a step ran out of memory",
            ["model"],
            registry=self.registry,
        )
        self.kv_held = Gauge(
            "scalpel_kv_cache_bytes",
            "Bytes of keys and values the model's decode batch holds now (its spare room included)",
            ["model"],
            registry=self.registry,
        )
        self.waiting = Gauge(
            "scalpel_generation_waiting",
            "Generation streams waiting to join the model's decode batch",
            ["model"],
            registry=self.registry,
        )
        self.refused = Counter(
            "scalpel_generation_refused_total",
            "Generation streams refused because the model had max_streams in flight",
            ["model"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "scalpel_prompt_tokens_total", "Prompt tokens prefilled for generation", ["model"], registry=self.registry
        )
        self.first_token = Histogram(
            "scalpel_time_to_first_token_seconds",
            "From a generation request reaching its model to its first token reaching its reader",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.per_output_token = Histogram(
            "scalpel_time_per_output_token_seconds",
            "A finished stream's mean time per token after its first, as its reader received them",
            ["model"],
            buckets=PER_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "scalpel_queue_wait_seconds",
            "Time a generation request waited in its model's scheduler queue before its prefill",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.engine_restarts = Counter(
            "scalpel_engine_restarts_total",
            "Engine processes started again after one died",
            ["model"],
            registry=self.registry,
        )
        self._generation_counts = _GenerationCounts()
        self.registry.register(self._generation_counts)
        self._http: Any = None

    def latency(self, model: str) -> ModelLatency:
        """The sink for ``model``'s stream latencies (service.engine.stream_timing)."""
        return ModelLatency(self, model)

    def forget_model(self, model: str) -> None:
        """Drop an unloaded model's per-model series."""
        series = (
            self.batch_rows,
            self.row_cap,
            self.kv_held,
            self.waiting,
            self.refused,
            self.prompt_tokens,
            self.first_token,
            self.per_output_token,
            self.queue_wait,
        )
        for metric in series:
            with contextlib.suppress(KeyError):  # a model that never made a stream has none
                metric.remove(model)

    def watch_generation(self, counts: Callable[[], dict[str, GenerationCounts]]) -> None:
        """Export ``counts()`` (per model) as ``scalpel_forwards_total``,
        ``scalpel_decode_steps_total``, ``scalpel_prefix_cache_hit_tokens_total``,
        ``scalpel_preempted_rows_total`` and ``scalpel_prefill_chunks_ridden_total``, read at each
        scrape."""
        self._generation_counts.counts = counts

    def serve(self, address: str) -> int:
        """Start the /metrics endpoint on ``host:port`` (port 0 picks one); returns the port."""
        host, _, port = address.rpartition(":")
        self._http, _ = start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)
        return self._http.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class ModelLatency:
    """One model's :class:`~service.engine.stream_timing.LatencySink`: its labelled series, looked up once."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.prompt = metrics.prompt_tokens.labels(model).inc
        self.queue_wait = metrics.queue_wait.labels(model).observe
        self.first_token = metrics.first_token.labels(model).observe
        self.per_output_token = metrics.per_output_token.labels(model).observe


class _GenerationCounts(Collector):
    """Each model's generation counters, read from the hosts when scraped (they are counted where
    the forwards run, in engine processes too)."""

    def __init__(self) -> None:
        self.counts: Callable[[], dict[str, GenerationCounts]] = dict

    def collect(self) -> Any:
        forwards = CounterMetricFamily(
            "scalpel_forwards", "Generation forwards run (prefills and decode steps)", labels=["model"]
        )
        steps = CounterMetricFamily("scalpel_decode_steps", "Decode steps run (one forward each)", labels=["model"])
        hits = CounterMetricFamily(
            "scalpel_prefix_cache_hit_tokens",
            "Prompt tokens whose keys and values came from the prefix cache instead of a prefill forward",
            labels=["model"],
        )
        preempted = CounterMetricFamily(
            "scalpel_preempted_rows",
            "Rows sent back to be prefilled again: by a step that ran out of memory, or at the KV budget (kv_cache_mb)",
            labels=["model"],
        )
        ridden = CounterMetricFamily(
            "scalpel_prefill_chunks_ridden",
            "Prefill chunks run in a decode step's forward instead of a forward of their own (ride_prefill)",
            labels=["model"],
        )
        for model, counts in self.counts().items():
            ridden.add_metric([model], counts.ridden)
            forwards.add_metric([model], counts.forwards)
            steps.add_metric([model], counts.steps)
            hits.add_metric([model], counts.prefix_hit_tokens)
            preempted.add_metric([model], counts.preempted)
        yield forwards
        yield steps
        yield hits
        yield preempted
        yield ridden


#: One line per call at INFO, JSON: method, code, milliseconds, the caller's key name (never its
#: secret) and the model a request names. Route or silence it with the ``scalpel.access`` logger.
ACCESS_LOG = logging.getLogger("scalpel.access")
_access: ContextVar[dict[str, str] | None] = ContextVar("scalpel_access", default=None)


def note_caller(name: str) -> None:
    """Called by authentication: the key name the access log line shows for this call."""
    record = _access.get()
    if record is not None:
        record["caller"] = name


def _model_of(request: Any) -> str:
    for field in ("model", "parent", "name", "version"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value.startswith("models/"):
            return value.split("/")[1]
    return ""


class MetricsInterceptor(WrappingInterceptor):
    """Counts and times every RPC by service, method and final status code, and writes the access
    log. Outermost: the handlers inside it get the call's :class:`CallContext`."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").rpartition("/")
        return rewrapped(handler, _Observed(self.metrics, service, name))


class _Observed:
    """One method's counting, timing and access log around each call. Synchronous behaviours run
    on a worker thread from here (service.api.handlers): every handler inside sees a
    :class:`CallContext`."""

    def __init__(self, metrics: Metrics, service: str, method: str) -> None:
        self.metrics = metrics
        self.service = service
        self.method = method

    @contextlib.contextmanager
    def _call(
        self, kind: str, request: Any, context: grpc.aio.ServicerContext, synchronous: bool
    ) -> Iterator[CallContext]:
        """The call's context, counted as started now and as handled with its final status (when
        it aborts, before the status leaves: a client that sees it finds the log line written)."""
        started = time.perf_counter()
        metrics = self.metrics
        labels = (kind, self.service, self.method)
        metrics.started.labels(*labels).inc()
        metrics.received.labels(*labels).inc()
        record: dict[str, str] = {}
        token = _access.set(record)
        observed = False

        def finish(code: grpc.StatusCode) -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            seconds = time.perf_counter() - started
            metrics.handled.labels(self.service, self.method, code.name).inc()
            metrics.seconds.labels(self.service, self.method).observe(seconds)
            if ACCESS_LOG.isEnabledFor(logging.INFO):
                line = {"method": self.method, "code": code.name, "ms": round(seconds * 1000, 2), **record}
                if model := _model_of(request):
                    line["model"] = model
                ACCESS_LOG.info(json.dumps(line))

        call = CallContext(context, synchronous, ending=finish)
        try:
            yield call
        except (GeneratorExit, asyncio.CancelledError):
            call.status = grpc.StatusCode.CANCELLED  # the client went away, or the server is stopping
            raise
        except Exception:
            if call.status == grpc.StatusCode.OK:  # not an abort: gRPC answers UNKNOWN
                call.status = grpc.StatusCode.UNKNOWN
            raise
        finally:
            with contextlib.suppress(ValueError):  # a stream finalised outside its call's task
                _access.reset(token)
            finish(call.status)

    def unary(self, inner: Behaviour) -> Behaviour:
        sent = self.metrics.sent.labels("unary", self.service, self.method)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._call("unary", request, context, synchronous=True) as call:
                reply = await run_on_worker(inner, request, call)
                sent.inc()
                return reply

        return run

    def stream(self, inner: Behaviour) -> Behaviour:
        sent = self.metrics.sent.labels("server_stream", self.service, self.method)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._call("server_stream", request, context, synchronous=True) as call:
                async for reply in iterate_on_worker(inner, request, call):
                    sent.inc()
                    yield reply

        return run

    def async_stream(self, inner: Behaviour) -> Behaviour:
        sent = self.metrics.sent.labels("server_stream", self.service, self.method)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._call("server_stream", request, context, synchronous=False) as call:
                try:
                    async for reply in inner(request, call):
                        sent.inc()
                        yield reply
                finally:
                    call.end()

        return run
