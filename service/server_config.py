"""What `scalpel serve` is configured with: the hosted models and the server's settings.

Torch-free: the CLI reads and checks a configuration, and starts the engine processes' fork
server (service.engine.forkserver), before importing the server, torch and transformers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from editors.toyworld import TOY_MODEL_DIR
from service.defaults import (
    DEFAULT_LOCATE_MAX_PASSES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DTYPE_NAMES,
)
from service.engine.defaults import MAX_BATCH_ROWS, PREFIX_CACHE_BYTES


@dataclass(frozen=True)
class ModelSpec:
    """Where a hosted model comes from and where it runs (``None``: the server's defaults)."""

    source: str
    device: str | None = None
    dtype: str | None = None

    @classmethod
    def parse(cls, name: str, value: object) -> ModelSpec:
        """``path-or-hub-id`` or ``{source, device, dtype}`` (config files); errors name the model."""
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"source", "device", "dtype"})
            if unknown or not isinstance(value.get("source"), str):
                raise ValueError(f"models.{name}: expected {{source, device, dtype}} with a source, got {value!r}")
            dtype = value.get("dtype")
            if dtype is not None and dtype not in DTYPE_NAMES:
                raise ValueError(f"models.{name}.dtype: {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
            return cls(value["source"], value.get("device"), dtype)
        raise ValueError(f"models.{name}: expected a path, a hub id or {{source, device, dtype}}, got {value!r}")

    @property
    def missing_directory(self) -> bool:
        """The source is written as a local path (not a hub id) and no directory is there."""
        return self.source.startswith(("/", "./", "../", "~")) and not Path(self.source).expanduser().is_dir()


@dataclass
class ServerConfig:
    #: name → path or hub id, or {source, device, dtype}
    models: dict[str, str | dict[str, str] | ModelSpec] = field(default_factory=lambda: {"toy": str(TOY_MODEL_DIR)})
    device: str = "cpu"  # for models that name none: cpu, cuda, cuda:1, mps, …
    dtype: str = "float32"  # for models that name none: float32, bfloat16, float16
    address: str = "127.0.0.1:50051"
    database_url: str | None = None
    # The audit chain's Ed25519 signing key (service.registry.audit_keys; $SCALPEL_AUDIT_KEY and
    # $SCALPEL_AUDIT_KEY_FILE take precedence). None: <data dir>.keys/audit_ed25519.pem, made on first use.
    audit_key_file: Path | None = None
    insecure: bool = False
    # A verified API key is trusted this long before the database is asked again (0: every call).
    # A revocation through this replica counts at once; one made elsewhere within this many seconds.
    key_cache_seconds: float = 1.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: every client must present a certificate this CA signed
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Worker threads for the synchronous handlers: every RPC but Generate, whose streams wait on the
    # event loop and hold no thread (service.api.handlers)
    workers: int = 256
    metrics_address: str | None = "127.0.0.1:9464"  # None: no metrics endpoint
    unhealthy_after_seconds: float = 30.0  # NOT_SERVING once the database is unreachable this long
    stale_run_seconds: float = 15.0  # a running check without a heartbeat this long lost its replica
    # A plaintext port serving only grpc.health.v1, for probes that cannot speak TLS (Kubernetes).
    health_address: str | None = None
    # Intra-op threads per forward (None: one per core, less one left to this process when
    # generation runs in engine processes; service.engine.intra_op.forward_threads), set by each model's
    # scheduler thread for itself (service.engine.intra_op): all the parallelism a forward gets.
    torch_threads: int | None = None
    # Tokens a stream gathers into one message while the batch is busy (0: automatic, see
    # service.engine.scheduler; 1: one message per token). Fewer messages leave more CPU for forwards.
    stream_interval: int = 0
    # Each model's generation streams in a process of their own over the shared weights
    # (service.engine.process): gRPC's Python work stops sharing a GIL with the decode steps.
    engine_process: bool = True
    # Generation streams per model in flight (in the batch or waiting to join it) beyond which a
    # new one is refused UNAVAILABLE (HTTP 503) at once, instead of queueing without bound.
    max_streams: int = 1024
    # Positions (rows × columns) per prefill forward: a longer prefill runs in chunks, with the
    # running rows' decode steps between them (chunked prefill), so a long prompt holds them up
    # one chunk at a time.
    prefill_chunk_tokens: int = 2048
    # Rows one decode step may hold (each row a stream or a check's completion): the KV cache grows
    # with them. A step that runs out of device memory anyway sends its newer half back to be
    # prefilled again (scalpel_preempted_rows_total); the batch takes rows back one per 64 steps.
    max_batch_rows: int = MAX_BATCH_ROWS
    # MiB of prompt prefixes' keys and values kept per model, per version (service.engine.prefix_cache):
    # a prompt starting like an earlier one under the same version skips that part of its prefill.
    prefix_cache_mb: int = PREFIX_CACHE_BYTES >> 20
    # MiB the generation batch's keys and values may take per model (0: no budget, as many rows as
    # max_batch_rows and the device allow). Rows join while they fit; a step that would pass it
    # sends its newest rows back to be prefilled again, before the device runs out; a request that
    # could not fit alone (prompt + max_tokens) is refused INVALID_ARGUMENT.
    kv_cache_mb: int = 0
    # A prefill chunk runs in the running rows' decode step, one forward for both (service.engine.ragged;
    # models attending with SDPA over their whole context), instead of a forward of its own.
    ride_prefill: bool = True
    # Decode steps a newcomer may wait while rows decode, to be gathered with others into one
    # prefill (admitted sooner once they are half the running rows); 0 admits it at the next step:
    # more prefills (or rides) for a shorter time to first token. None: 0 where prefill chunks ride
    # in decode steps, 8 where they run apart (service.engine.scheduler.GATHER_STEPS).
    admit_within_steps: int | None = None
    # The OpenAI-compatible HTTP gateway (service.gateway) on host:port, beside gRPC (None: off).
    # Same keys, same engine; TLS when tls_cert/tls_key are set.
    http_address: str | None = None
    # LoadModel may fetch a hub id from the Hugging Face hub (False: local directories and the
    # local hub cache only, for air-gapped replicas: an unknown id fails at once).
    hub_downloads: bool = True
    # The most passes (forwards and backwards over one batch of prompt pairs) one DiscoverCircuit
    # may run; a request that could need more is RESOURCE_EXHAUSTED before any work.
    locate_max_passes: int = DEFAULT_LOCATE_MAX_PASSES

    def __post_init__(self) -> None:
        for field_name in ("max_streams", "prefill_chunk_tokens", "max_batch_rows"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{field_name} must be at least 1, got {getattr(self, field_name)}")
        if self.prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be 0 (off) or more, got {self.prefix_cache_mb}")
        if self.admit_within_steps is not None and self.admit_within_steps < 0:
            raise ValueError(f"admit_within_steps must be 0 (at once) or more, got {self.admit_within_steps}")
        if self.kv_cache_mb < 0:
            raise ValueError(f"kv_cache_mb must be 0 (no budget) or more, got {self.kv_cache_mb}")
