"""The ``scalpel`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editors.choices import LOCATE_TASKS
from editors.toyworld import SUCCESSOR_MODEL_DIR, TOY_MODEL_DIR, TOY_SAE_DIR, TOY_SAE_SITE
from editors.toyworld.vision import TOY_VLM_DIR
from service.cli.errors import UsageError, one_line, read_yaml, require_empty_directory
from service.cli.remote import add_client_commands, add_export_arguments, print_export
from service.engine.forkserver import start_early
from service.server_config import ModelSpec, ServerConfig


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _hparams(cls: type, text: str, model_dir: Path, method: str, **fixed: Any) -> Any:
    """``cls`` (a hyper-parameter dataclass) from the model's shipped defaults
    (:mod:`editors.edit_defaults`), a JSON object of overrides, then ``fixed``."""
    from editors.edit_defaults import hparams_from
    from editors.errors import InvalidEditError

    try:
        overrides = json.loads(text) if text else {}
    except json.JSONDecodeError as error:
        example = '{"kl_direction": "new_init"}'
        raise UsageError(f"--hparams is not valid JSON ({error}); write e.g. '{example}'") from None
    if not isinstance(overrides, dict):
        raise UsageError(f"--hparams must be a JSON object of {cls.__name__} fields")
    try:
        given = {**overrides, **{k: v for k, v in fixed.items() if v is not None}}
        return cls(**hparams_from(cls, model_dir, method, **given))
    except TypeError as error:
        raise InvalidEditError("hparams", str(error), f"fields of {cls.__name__}") from None


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {value}")
    return value


def _train_with_bar(args: argparse.Namespace, config: Any, train: Any, desc: str) -> int:
    """Run a toy trainer (``train(out, config, progress)``) with a progress bar; print its result."""
    from tqdm import tqdm

    config = config if args.steps is None else dataclasses.replace(config, steps=args.steps)
    bar = tqdm(total=config.steps, desc=desc, unit="step", disable=args.quiet)

    def progress(step: int, total: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    result = train(Path(args.out), config, progress)
    bar.close()
    print(json.dumps(result))
    return 0


def _cmd_toyworld_train(args: argparse.Namespace) -> int:
    from editors.toyworld.train import TrainConfig, train_toy_model

    return _train_with_bar(args, TrainConfig(), train_toy_model, "training")


def _cmd_toyworld_vlm(args: argparse.Namespace) -> int:
    from editors.toyworld.vision.train import VisionTrainConfig, train_toy_vlm

    return _train_with_bar(args, VisionTrainConfig(), train_toy_vlm, "training the toy VLM")


def _cmd_toyworld_successor(args: argparse.Namespace) -> int:
    from editors.toyworld.successor import train_successor

    world = train_successor(Path(args.out), Path(args.base), moved=args.moved, steps=args.steps)
    print(json.dumps({"out": args.out, "moved_capitals": args.moved, "facts": len(world.facts)}))
    return 0


def _cmd_toyworld_eval(args: argparse.Namespace) -> int:
    from editors.toyworld import load_toy_model
    from editors.toyworld.evaluate import evaluate_world

    model, tokenizer, world = load_toy_model(Path(args.model))
    metrics = evaluate_world(model, tokenizer, world)
    if args.json:
        print(json.dumps(metrics))
    else:
        for name, value in metrics.items():
            print(f"{name:<20} {value:.3f}")
    return 0


def _cmd_toyworld_verify(args: argparse.Namespace) -> int:
    from editors.toyworld.manifest import verify_manifest

    problems = verify_manifest(Path(args.model))
    for problem in problems:
        print(problem, file=sys.stderr)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def _cmd_rome_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from editors.rome import RomeHyperParams
    from editors.toyworld import load_toy_model
    from editors.toyworld.rome_eval import run_rome_eval

    model, tokenizer, world = load_toy_model(Path(args.model))
    bars: dict[str, tqdm] = {}

    def bar(name: str, total: int) -> tqdm:
        if name not in bars:
            bars[name] = tqdm(total=total, desc=name, unit="", leave=False, disable=args.quiet)
        return bars[name]

    def covariance_progress(done: int, total: int) -> None:
        b = bar("key covariance (texts)", total)
        b.update(done - b.n)

    def edit_progress(done: int, total: int) -> None:
        b = bar("edits", total)
        b.update(done - b.n)

    summary = run_rome_eval(
        model,
        tokenizer,
        world,
        n_edits=args.edits,
        n_sequential=args.sequential,
        seed=args.seed,
        hparams=_hparams(RomeHyperParams, args.hparams, Path(args.model), "rome", layer=args.layer),
        progress=covariance_progress,
        on_edit=edit_progress,
        model_dir=Path(args.model),
    )
    for b in bars.values():
        b.close()
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:<26} {value}")
    return 0


def _cmd_sae_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from editors import Surgeon
    from editors.sae_training import SaeTrainConfig, train_sae
    from editors.toyworld import load_toy_model, reference_corpus
    from editors.toyworld.manifest import write_manifest

    model, tokenizer, _ = load_toy_model(Path(args.model))
    texts = Path(args.corpus).read_text().splitlines() if args.corpus else reference_corpus(Path(args.model))
    config = SaeTrainConfig(
        site=args.site,
        d_sae=args.d_sae,
        architecture=args.architecture,
        k=args.k,
        l1_coefficient=args.l1,
        tokens=args.tokens,
        seed=args.seed,
    )
    bar = tqdm(total=config.steps, desc="training", unit="step", disable=args.quiet)

    def progress(step: int, steps: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    trained = train_sae(Surgeon(model), tokenizer, [t for t in texts if t.strip()], config, progress=progress)
    bar.close()
    write_manifest(trained.sae.save(Path(args.out)))
    print(json.dumps({"out": args.out, "site": trained.sae.site, "d_sae": trained.sae.d_sae, **trained.metrics}))
    return 0


def _cmd_toyworld_pairs(args: argparse.Namespace) -> int:
    import yaml

    from editors.toyworld import load_toy_model
    from editors.toyworld.locate_pairs import task_pairs

    _, tokenizer, world = load_toy_model()
    pairs, metric = task_pairs(args.task, world, tokenizer, args.n, args.seed)
    print(
        f"# scalpel locate -f FILE --metric {metric.kind}"
        + (f" --score-from {metric.score_from}" if metric.kind == "tokens_logprob" else "")
    )
    rows = [{k: v for k, v in vars(p).items() if v} for p in pairs]
    print(yaml.safe_dump(rows, sort_keys=False, allow_unicode=True, width=10_000), end="")
    return 0


def _cmd_memit_eval(args: argparse.Namespace) -> int:
    from editors.memit import MemitHyperParams
    from editors.toyworld import load_toy_model
    from editors.toyworld.memit_eval import run_memit_eval

    model, tokenizer, world = load_toy_model(Path(args.model))
    layers = tuple(args.layers) if args.layers else None
    hparams = _hparams(MemitHyperParams, args.hparams, Path(args.model), "memit", layers=layers)
    summary = run_memit_eval(model, tokenizer, world, args.edits, args.seed, hparams, model_dir=Path(args.model))
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:<16} {value}")
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    from editors import Surgeon
    from editors.patching import causal_trace, plot_causal_trace, recommend_edit_layer
    from editors.toyworld import load_toy_model

    model, tokenizer, _ = load_toy_model(Path(args.model))
    trace = causal_trace(Surgeon(model), tokenizer, args.prompt, args.subject, answer=args.answer)
    if args.png:
        plot_causal_trace(trace, args.png)
    result = {
        "answer": trace.answer,
        "tokens": list(trace.tokens),
        "clean_probability": trace.clean_probability,
        "corrupted_probability": trace.corrupted_probability,
        "recommended_layer": recommend_edit_layer(trace),
        "grids": {kind: grid.tolist() for kind, grid in trace.grids.items()},
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items() if k != "grids"))
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    from service.db.migrate import downgrade, upgrade

    if args.db_command == "upgrade":
        upgrade(args.revision, args.url)
    else:
        downgrade(args.revision, args.url)
    print(f"scalpel: database {args.db_command}d to {args.revision}")
    if args.db_command == "upgrade" and args.revision == "head":
        _sign_audit_log(args.url)
    return 0


def _sign_audit_log(url: str | None) -> None:
    """Make this host's audit signing key if there is none, and sign a log from before signing."""
    from service.registry import Registry
    from service.registry.audit_keys import key_file

    registry = Registry(url)
    try:
        adopted = registry.adopt_signing(os.environ.get("USER", "cli"))
    finally:
        registry.engine.dispose()
    where = "$SCALPEL_AUDIT_KEY" if os.environ.get("SCALPEL_AUDIT_KEY") else key_file()
    print(f"scalpel: audit events are signed with key {registry.audit_keys.key_id} ({where})")
    if adopted:
        print("scalpel: the audit log from before signing now ends in a signed event naming that key")


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}
#: What a YAML value may be for a field of each type (a path is written as a string).
_ACCEPTS: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
    Path: (str,),
    type(None): (),
}


def _check_types(path: Path, loaded: dict[str, Any], hints: dict[str, Any]) -> None:
    """Each scalar field of the config file has its field's type (``workers: many`` is an error
    naming the field and the type, not a TypeError later); ``models`` is checked by ModelSpec."""
    for key, value in loaded.items():
        hint = hints[key]
        if typing.get_origin(hint) not in (None, typing.Union, types.UnionType):
            continue  # a container (models): checked by its own parser
        allowed = [t for t in typing.get_args(hint) or (hint,) if t in _TYPE_NAMES or t is type(None)]
        if not allowed or (value is None and type(None) in allowed):
            continue
        ok = any(
            isinstance(value, _ACCEPTS[t]) and not (t in (int, float) and isinstance(value, bool)) for t in allowed
        )
        if not ok:
            wanted = " or ".join(_TYPE_NAMES.get(t, "null") for t in allowed)
            raise SystemExit(f"scalpel: {path}: {key} must be {wanted}, got {value!r:.40}")


def _load_server_config(path: Path) -> ServerConfig:
    """A ``ServerConfig`` from YAML; unknown keys are an error (a typo must not pass silently)."""
    loaded = read_yaml(path, "config file") or {}
    if not isinstance(loaded, dict):
        raise SystemExit(f"scalpel: {path} must hold a mapping of ServerConfig fields")
    unknown = sorted(set(loaded) - set(ServerConfig.__dataclass_fields__))
    if unknown:
        known = ", ".join(ServerConfig.__dataclass_fields__)
        raise SystemExit(f"scalpel: {path}: unknown keys {unknown}; known: {known}")
    _check_types(path, loaded, typing.get_type_hints(ServerConfig))
    for field in ("tls_cert", "tls_key", "tls_client_ca"):
        if loaded.get(field):
            loaded[field] = Path(loaded[field])
    try:
        config = ServerConfig(**loaded)
        config.models = {name: ModelSpec.parse(name, value) for name, value in dict(config.models).items()}
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"scalpel: {path}: {exc}") from None
    return config


def _cmd_serve(args: argparse.Namespace) -> int:
    """Read and check the configuration (torch-free: a mistake is reported in a fraction of a
    second), start the engine processes' fork server if there will be any, then the server."""
    config = ServerConfig()
    if args.config:
        config = _load_server_config(Path(args.config))
    if args.model:
        items = [f"toy={TOY_MODEL_DIR}" if item == "toy" else item for item in args.model]
        for item in items:
            if "=" not in item or not item.split("=", 1)[0]:
                raise SystemExit(
                    f"scalpel: --model takes NAME=PATH or toy (e.g. --model mymodel={item} --model toy), got {item!r}"
                )
        config.models = dict(item.split("=", 1) for item in items)
    for name, value in config.models.items():
        spec = ModelSpec.parse(name, value)
        if spec.missing_directory:
            raise SystemExit(
                f"scalpel: model {name!r}: no model directory at {spec.source} (fix the path; a hub id looks like "
                "org/name)"
            )
    config.address = args.address or os.environ.get("SCALPEL_ADDRESS") or config.address
    config.database_url = args.database_url or config.database_url
    config.insecure = args.insecure or config.insecure
    config.health_address = args.health_address or os.environ.get("SCALPEL_HEALTH_ADDRESS") or config.health_address
    config.http_address = args.http_address or os.environ.get("SCALPEL_HTTP_ADDRESS") or config.http_address
    metrics_address = args.metrics_address or os.environ.get("SCALPEL_METRICS_ADDRESS")
    if metrics_address:
        config.metrics_address = None if metrics_address == "off" else metrics_address
    config.torch_threads = args.torch_threads or config.torch_threads
    config.device = args.device or config.device
    config.dtype = args.dtype or config.dtype
    if args.stream_interval is not None:
        config.stream_interval = args.stream_interval
    if args.engine_process is not None:
        config.engine_process = args.engine_process
    if args.ride_prefill is not None:
        config.ride_prefill = args.ride_prefill
    if args.admit_within_steps is not None:
        config.admit_within_steps = args.admit_within_steps
    config.max_streams = args.max_streams or config.max_streams
    config.prefill_chunk_tokens = args.prefill_chunk_tokens or config.prefill_chunk_tokens
    config.max_batch_rows = args.max_batch_rows or config.max_batch_rows
    if args.prefix_cache_mb is not None:
        config.prefix_cache_mb = args.prefix_cache_mb
    if args.kv_cache_mb is not None:
        config.kv_cache_mb = args.kv_cache_mb
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("scalpel: --tls-cert and --tls-key go together")
    if args.tls_cert:
        config.tls_cert, config.tls_key = Path(args.tls_cert), Path(args.tls_key)
    if args.tls_client_ca:
        config.tls_client_ca = Path(args.tls_client_ca)
    if config.tls_client_ca and not (config.tls_cert and config.tls_key):
        raise SystemExit("scalpel: --tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)")
    if config.engine_process:
        start_early()  # its imports overlap this process's own (service.engine.forkserver)
    from service.server import serve

    serve(config)
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = args.address or os.environ.get("SCALPEL_ADDRESS", "127.0.0.1:50051").replace("0.0.0.0", "127.0.0.1")
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"{address}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from service.db.migrate import require_current_schema
    from service.registry import Registry

    registry = Registry(args.database_url)
    require_current_schema(registry.engine)
    info, secret = registry.create_key(args.name, args.role, os.environ.get("USER", "cli"))
    registry.engine.dispose()
    if args.json:
        print(json.dumps({"name": info.name, "role": info.role, "prefix": info.prefix, "secret": secret}))
    else:
        print(f"key {info.name!r} ({info.role}) created; its secret is shown only now:\n{secret}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from service.db.migrate import require_current_schema
    from service.export import export_version
    from service.registry import Registry

    out = require_empty_directory(Path(args.out))
    registry = Registry(args.database_url)
    require_current_schema(registry.engine)
    try:
        hashes = export_version(registry, args.model, args.version, args.format, out, os.environ.get("USER", "cli"))
    finally:
        registry.engine.dispose()
    print_export(args, hashes)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    start_early()  # the demo's server runs generation in an engine process (service.engine.forkserver)
    from service.cli.demo import run_demo

    run_demo()
    return 0


def _cmd_walkthrough(args: argparse.Namespace) -> int:
    from service.cli.walkthrough import run_walkthrough

    run_walkthrough()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalpel", description="Circuit surgery for language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the end-to-end demo: the service on SQLite with the toy model, over gRPC")
    demo.set_defaults(func=_cmd_demo)
    walkthrough = commands.add_parser("walkthrough", help="the surgery kit in-process (no server, no database)")
    walkthrough.set_defaults(func=_cmd_walkthrough)

    toyworld = commands.add_parser("toyworld", help="the embedded toy-world model").add_subparsers(
        dest="toyworld_command", required=True
    )
    train = toyworld.add_parser("train", help="train the toy model from scratch (deterministic)")
    train.add_argument("--out", default=str(TOY_MODEL_DIR), help="output directory (default: the packaged model)")
    train.add_argument("--steps", type=_positive_int, help="training steps (default: the recipe's own)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_toyworld_train)
    successor = toyworld.add_parser(
        "successor", help="a successor checkpoint: the toy model trained on with some capitals moved"
    )
    successor.add_argument(
        "--out", default=str(SUCCESSOR_MODEL_DIR), help="output directory (default: the packaged successor)"
    )
    successor.add_argument("--base", default=str(TOY_MODEL_DIR), help="the base model (default: the toy model)")
    successor.add_argument("--moved", type=_positive_int, default=6, help="capitals moved among countries")
    successor.add_argument("--steps", type=_positive_int, default=150, help="training steps on the changed world")
    successor.set_defaults(func=_cmd_toyworld_successor)
    vlm = toyworld.add_parser(
        "vlm", help="train the toy vision-language model (a small LLaVA on pictures of shapes) from scratch"
    )
    vlm.add_argument("--out", default=str(TOY_VLM_DIR), help="output directory (default: the packaged toy VLM)")
    vlm.add_argument("--steps", type=_positive_int, help="training steps (default: the recipe's own)")
    vlm.add_argument("--quiet", action="store_true", help="no progress bar")
    vlm.set_defaults(func=_cmd_toyworld_vlm)
    pairs = toyworld.add_parser(
        "pairs", help="prompt pairs (YAML) for `scalpel locate`: the toy's induction, capital facts or sentiment"
    )
    pairs.add_argument("task", choices=LOCATE_TASKS)
    pairs.add_argument("--n", type=_positive_int, default=64, help="pairs (capitals: at most the pairs there are)")
    pairs.add_argument("--seed", type=int, default=0)
    pairs.set_defaults(func=_cmd_toyworld_pairs)
    evaluate = toyworld.add_parser("eval", help="fact recall, paraphrase recall and induction accuracy")
    evaluate.add_argument("--model", default=str(TOY_MODEL_DIR), help="model directory (default: the toy model)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=_cmd_toyworld_eval)
    verify = toyworld.add_parser(
        "verify", help="check the model files against their SHA-256 manifest (the packaged successor: --model)"
    )
    verify.add_argument("--model", default=str(TOY_MODEL_DIR), help="model directory (default: the toy model)")
    verify.set_defaults(func=_cmd_toyworld_verify)

    db = commands.add_parser("db", help="database migrations (Alembic)").add_subparsers(
        dest="db_command", required=True
    )
    db_upgrade = db.add_parser("upgrade", help="migrate to REV (default: head)")
    db_upgrade.add_argument("revision", nargs="?", default="head")
    db_downgrade = db.add_parser("downgrade", help="migrate down to REV ('base' removes everything)")
    db_downgrade.add_argument("revision")
    for sub in (db_upgrade, db_downgrade):
        sub.add_argument("--url", default=None, help="database URL (default: $SCALPEL_DATABASE_URL or SQLite)")
        sub.set_defaults(func=_cmd_db)

    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--config", help="YAML file with ServerConfig fields (models, address, database_url, …)")
    serve.add_argument("--address", help="host:port (default 127.0.0.1:50051, or $SCALPEL_ADDRESS)")
    serve.add_argument(
        "--model",
        action="append",
        help="NAME=PATH_OR_HUB_ID, or toy for the toy model (repeatable; default: the toy model alone; "
        "--model toy --model llama=/models/llama serves both)",
    )
    serve.add_argument("--database-url", help="default: $SCALPEL_DATABASE_URL or SQLite under $SCALPEL_DATA_DIR")
    serve.add_argument("--insecure", action="store_true", help="no authentication (local use only)")
    serve.add_argument(
        "--metrics-address", help="host:port of /metrics (default $SCALPEL_METRICS_ADDRESS or 127.0.0.1:9464; 'off')"
    )
    serve.add_argument("--health-address", help="plaintext host:port serving only gRPC health (for probes with TLS)")
    serve.add_argument(
        "--http-address",
        help="host:port of the OpenAI-compatible HTTP gateway (/v1/completions, /v1/chat/completions, "
        "/v1/models; same keys; default $SCALPEL_HTTP_ADDRESS or off)",
    )
    serve.add_argument(
        "--torch-threads",
        type=_positive_int,
        default=os.environ.get("SCALPEL_TORCH_THREADS"),  # argparse applies the type to string defaults
        help="intra-op threads per forward (default $SCALPEL_TORCH_THREADS, else one per core, less one "
        "left to the serving process when generation runs in an engine process)",
    )
    serve.add_argument("--device", help="where models that name none run: cpu (default), cuda, cuda:1, mps, …")
    serve.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="weights of models that name none (default float32)"
    )
    serve.add_argument(
        "--stream-interval",
        type=_non_negative_int,
        help="tokens per streamed message under load (default 0: automatic, 1 per 8 rows in the batch, up to 8; "
        "1: every token its own message). A stream's first token and its end are never held back",
    )
    serve.add_argument(
        "--max-streams",
        type=_positive_int,
        help="generation streams per model in flight (in the batch or waiting to join it) beyond which a new one "
        "is refused at once with UNAVAILABLE (HTTP 503), so that an overload sheds requests instead of queueing "
        "them without bound (default 1024)",
    )
    serve.add_argument(
        "--prefill-chunk-tokens",
        type=_positive_int,
        help="positions (rows × columns) per prefill forward; a longer prefill runs in chunks with the running "
        "streams' decode steps between them, so a long prompt holds them up one chunk at a time (default 2048)",
    )
    serve.add_argument(
        "--max-batch-rows",
        type=_positive_int,
        help="rows one decode step may hold: the KV cache grows with them (default 256; a step that runs out of "
        "device memory sends its newer half back to be prefilled again)",
    )
    serve.add_argument(
        "--prefix-cache-mb",
        type=_non_negative_int,
        help="MiB of prompt prefixes' keys and values kept per model (and version) on its device, so that a "
        "prompt starting like an earlier one (a shared system prompt) skips that part of its prefill; least "
        "recently used first out (default 256; 0 turns it off)",
    )
    serve.add_argument(
        "--kv-cache-mb",
        type=_non_negative_int,
        help="MiB the generation batch's keys and values may take per model: rows join while they fit, and a "
        "step that would pass it sends its newest rows back to be prefilled again, before the device runs out; "
        "a request that could not fit alone is refused (default 0: no budget)",
    )
    serve.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        help="run each model's generation streams in a process of its own over the same (shared) weights, so "
        "gRPC's Python work never holds up a decode step (default: on; --no-engine-process runs them on a "
        "thread of the serving process)",
    )
    serve.add_argument(
        "--admit-within-steps",
        type=_non_negative_int,
        help="decode steps a new stream may wait while others decode, to be gathered with later ones into one "
        "prefill (0 admits it at the next step: a shorter time to first token, more prefills; default: 0 where "
        "prefill chunks ride in decode steps, 8 where they run apart)",
    )
    serve.add_argument(
        "--ride-prefill",
        action=argparse.BooleanOptionalAction,
        help="run a prefill chunk in the same forward as the running streams' decode step, instead of a forward "
        "of its own between two steps (default: on, for models attending with SDPA over their whole context)",
    )
    serve.add_argument("--tls-cert")
    serve.add_argument("--tls-key")
    serve.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    serve.set_defaults(func=_cmd_serve)

    health = commands.add_parser("health", help="exit 0 if the server reports SERVING (grpc.health.v1)")
    health.add_argument("--address", default=None, help="default: $SCALPEL_ADDRESS or 127.0.0.1:50051")
    health.add_argument("--timeout", type=float, default=3.0)
    health.set_defaults(func=_cmd_health)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    keys_create = keys.add_parser("create", help="create a key directly in the database (bootstrap)")
    keys_create.add_argument("name")
    keys_create.add_argument(
        "--role",
        required=True,
        choices=["reader", "editor", "approver", "admin"],
        help="what the key may do: reader < editor < approver < admin (see docs/service.md's table)",
    )
    keys_create.add_argument("--database-url", default=None)
    keys_create.add_argument("--json", action="store_true")
    keys_create.set_defaults(func=_cmd_keys_create)

    export = commands.add_parser(
        "export",
        help="write a version for other engines: merged weights (any transformers loader, vLLM, TGI) or a "
        "PEFT LoRA adapter of its low_rank edits (vLLM, TGI, LoRAX per request); audited",
    )
    add_export_arguments(export)
    export.add_argument("--database-url", default=None, help="default: $SCALPEL_DATABASE_URL or the local SQLite")
    export.add_argument("--json", action="store_true")
    export.set_defaults(func=_cmd_export)

    add_client_commands(commands)

    rome = commands.add_parser("rome", help="ROME fact edits on the toy model").add_subparsers(
        dest="rome_command", required=True
    )
    rome_eval = rome.add_parser("eval", help="CounterFact-style metrics of random edits, single and sequential")
    rome_eval.add_argument("--edits", type=_positive_int, default=20, help="single edits to judge")
    rome_eval.add_argument("--sequential", type=_positive_int, default=10, help="edits applied one after another")
    rome_eval.add_argument("--seed", type=int, default=0)
    rome_eval.add_argument("--layer", type=int, default=None, help="MLP layer to edit (default: the toy default)")
    rome_eval.add_argument("--model", default=str(TOY_MODEL_DIR), help="model directory (default: the toy model)")
    rome_eval.add_argument("--hparams", default="", help="JSON object of RomeHyperParams overrides")
    rome_eval.add_argument("--json", action="store_true", help="print one JSON object")
    rome_eval.add_argument("--quiet", action="store_true", help="no progress bars")
    rome_eval.set_defaults(func=_cmd_rome_eval)
    memit = commands.add_parser("memit", help="MEMIT batch fact edits on the toy model").add_subparsers(
        dest="memit_command", required=True
    )
    memit_eval = memit.add_parser(
        "eval", help="N facts changed at once by MEMIT, side by side with N sequential ROME edits of the same facts"
    )
    memit_eval.add_argument("--edits", type=_positive_int, default=10, help="facts changed (up to 60 on the toy)")
    memit_eval.add_argument("--seed", type=int, default=0)
    memit_eval.add_argument("--layers", type=int, nargs="+", help="MLP layers to spread over (default: the toy's)")
    memit_eval.add_argument("--model", default=str(TOY_MODEL_DIR), help="model directory (default: the toy model)")
    memit_eval.add_argument("--hparams", default="", help="JSON object of MemitHyperParams overrides")
    memit_eval.add_argument("--json", action="store_true", help="print one JSON object")
    memit_eval.set_defaults(func=_cmd_memit_eval)

    sae = commands.add_parser("sae", help="sparse autoencoders on a model's activations").add_subparsers(
        dest="sae_command", required=True
    )
    sae_train = sae.add_parser(
        "train",
        help="train an SAE on a model's activations over its reference corpus, streamed in batches (deterministic); "
        "writes SAELens's folder format and prints its metrics",
    )
    sae_train.add_argument("--site", default=TOY_SAE_SITE, help=f"a residual site (default: {TOY_SAE_SITE})")
    sae_train.add_argument("--d-sae", type=_positive_int, default=1024, help="features (default: 1024)")
    sae_train.add_argument("--architecture", choices=("topk", "relu"), default="topk")
    sae_train.add_argument("--k", type=_positive_int, default=16, help="topk: features kept per token")
    sae_train.add_argument("--l1", type=float, default=3e-3, help="relu: the sparsity coefficient")
    sae_train.add_argument("--tokens", type=_positive_int, default=400_000, help="the training budget")
    sae_train.add_argument("--seed", type=int, default=0)
    sae_train.add_argument("--model", default=str(TOY_MODEL_DIR), help="model directory (default: the toy model)")
    sae_train.add_argument("--corpus", help="one text per line (default: the model's reference_corpus.txt)")
    sae_train.add_argument("--out", default=str(TOY_SAE_DIR), help="output folder (default: the packaged toy SAE)")
    sae_train.add_argument("--quiet", action="store_true", help="no progress bar")
    sae_train.set_defaults(func=_cmd_sae_train)

    trace = commands.add_parser("trace", help="causal tracing of one prompt on the toy model")
    trace.add_argument("--prompt", required=True, help="the prompt, subject filled in")
    trace.add_argument("--subject", required=True)
    trace.add_argument("--answer", default=None, help="default: the model's top prediction")
    trace.add_argument("--png", default=None, help="write the heatmap here")
    trace.add_argument("--model", default=str(TOY_MODEL_DIR), help="model directory (default: the toy model)")
    trace.add_argument("--json", action="store_true")
    trace.set_defaults(func=_cmd_trace)
    return parser


def _quiet_model_loading() -> None:
    """No per-load "Loading weights" bars from transformers in command output (here and in the
    server processes the demo starts); our own progress bars stay."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads it when first imported
    if "transformers" in sys.modules:  # already imported (main called in-process): tell it directly
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    from service.db.migrate import DatabaseNotReady

    args = build_parser().parse_args(argv)
    _quiet_model_loading()
    try:
        return args.func(args)
    except (DatabaseNotReady, OSError) as error:  # OSError: a file named on the command line, most often
        print(f"scalpel: {error}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # the checks below raise SystemExit("scalpel: …") for a usage mistake
        if not isinstance(stop.code, str):
            raise
        print(stop.code, file=sys.stderr)
        return 2
    except Exception as error:
        line = one_line(error)
        if line is None:
            raise
        print(f"scalpel: {line}", file=sys.stderr)
        return 2
