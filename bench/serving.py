"""The serving engine against its limit and against the previous path, side by side in one run.

    python bench/serving.py --json
    → {"c{N}_same_ratio_to_limit", "c{N}_mixed_ratio_to_limit", "c{N}_speedup_vs_turns",
       "ttft_p50_ms_c{N}", "ttft_p99_ms_c{N}", "c{N}_same_tokens_per_s", …} for N in 1, 8, 64

Greedy, 32 new tokens, prompts the toy model keeps continuing (repeated symbol sequences, 25
tokens each). Every run of every side gets prompts of its own, so the server's prefix cache (on by
default) never finds one it stored: the limit has no such cache, and `bench/prefix_cache.py`
measures what it gives where prompts do share a start.

- **limit**: `transformers`' own `generate` on the plain model, in this process, at batch =
  concurrency (left-padded): what the hardware gives with no service and no edits at all.
- **same**: N concurrent gRPC streams to a `scalpel serve` process (its defaults: generation in
  an engine process of its own), all on the base version.
- **inline**: the same streams to a `scalpel serve --no-engine-process` (generation on a thread
  of the serving process, sharing its GIL with the gRPC handlers): what the engine process adds.
- **mixed**: the same N streams spread over 8 versions mixing steering, head ablation and ROME
  edits (stream i asks for version i mod 8), so each decode step carries up to 8 stacks.
- **grpc ceiling**: streamed messages/s of a model-less gRPC server process at the same
  concurrency (`bench/grpc_ceiling.py`): what one message per token can reach at best here.
- **engine**: the same scheduler in a process of its own, streams read straight from it (no
  gRPC): the engine's own share of the gap to the limit.
- **aligned**: the same scheduler process given `generate`'s own batches (N prompts joining at
  once, one reader thread): the forward path alone, without arrivals spread over steps and
  without a reader thread per stream.
- **limit at engine threads** (on the CPU): the limit again, in a process of its own whose torch
  runs on the engine process's intra-op threads (the server's ``--torch-threads``, by default one
  per core but one: `service.engine.intra_op.forward_threads`). The limit has every core for its forward,
  while the engine process leaves one to the serving process and the client; this side shows, in
  every run, how much of the gap to the limit is that split of the cores
  (``c{N}_same_ratio_to_limit_at_engine_threads``; the headline ratio stays the one to the limit).
- **turns**: the previous path (one sequence per forward, streams taking turns on a lock), run
  in this process with no gRPC at all, so its figure is an upper bound for the old service.

Also printed: the "same" side's time to first token (p50, p99) and its tokens per message (1.0
when every token travelled alone; more when a stream's tokens were coalesced because its
handler fell behind the engine); the server's forwards per 1,000 of its tokens
(`c{N}_forwards_per_1000_tokens`, read off `scalpel_forwards_total`; `generate`'s aligned batches
of 25-token prompts and 32 new tokens run 15.6); and where its time to first token goes, as means
(`c{N}_ttft_ms_mean`: the client's; `c{N}_server_ttft_ms_mean`: the server's, from the request
reaching its model to the first token reaching the stream's reader; `c{N}_queue_wait_ms_mean`:
the part of that spent in the scheduler's queue before the prefill), read from the server's
latency histograms on /metrics around each "same" run.

Each round runs every side back to back (order alternating); a ratio is the median over rounds of
the ratio within a round, so drift of this (shared, noisy) machine hits both sides alike.
Targets (issue 14): c64 same ≥ 0.8× the limit, mixed ≥ 0.9× same, c64 speedup vs turns ≥ 10.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.grpc_ceiling import ceiling  # noqa: E402
from bench.report import report  # noqa: E402
from bench.serve_process import serve_process  # noqa: E402
from editors import HeadAblation, Steering, Surgeon  # noqa: E402
from editors.covariance import key_covariance  # noqa: E402
from editors.rome import compute_rome  # noqa: E402
from editors.steering import derive_steering  # noqa: E402
from editors.toyworld import TOY_MODEL_DIR, load_toy_model, reference_corpus  # noqa: E402
from editors.toyworld.counterfact import edit_cases  # noqa: E402
from editors.toyworld.evaluate import sentiment_pairs  # noqa: E402
from service.client import ScalpelClient  # noqa: E402
from service.engine.intra_op import forward_threads, serial_thread  # noqa: E402
from service.engine.scheduler import Sampling, Token  # noqa: E402
from service.engine.startup_heap import freeze_startup_heap  # noqa: E402
from service.hosting import ModelHost  # noqa: E402
from service.registry import Registry  # noqa: E402

NEW_TOKENS = 32
CONCURRENCY = (1, 8, 64)
VERSIONS = 8


#: Each batch of prompts gets a seed of its own: the server's prefix cache must never find a
#: prompt it saw before (``generate``, the limit, has no such cache; every prompt has 25 tokens).
_SEEDS = itertools.count(1)


def prompts(world, n: int, seed: int | None = None) -> list[str]:
    """``n`` prompts the toy model keeps continuing, each a fresh sequence (``seed``: the next one)."""
    rng = random.Random(next(_SEEDS) if seed is None else seed)
    return [" ".join((seq := rng.sample(world.symbols, 12)) + seq) for _ in range(n)]


def edits_for_versions(model, tokenizer, world) -> list[list]:
    """Eight edit lists: the base, then steering, head ablation and ROME edits, alone and mixed."""
    surgeon = Surgeon(model)
    steer = derive_steering(surgeon, tokenizer, sentiment_pairs(world), layer=1, scale=2.0)
    far = Steering(site="blocks.3.hook_resid_pre", vector=torch.ones(128) * 0.05, positions=tuple(range(0, 64, 2)))
    covariance = key_covariance(surgeon, tokenizer, reference_corpus(), 0)[0]
    romes = [
        compute_rome(surgeon, tokenizer, case.request, covariance, reference_corpus()).edit
        for case in edit_cases(world, 2, seed=3)
    ]
    heads = HeadAblation(layer=1, heads=(0, 2))
    return [[], [steer], [heads], [romes[0]], [steer, heads], [romes[1], far], [heads, romes[0]], [far, steer]]


def limit_tokens_per_second(model, tokenizer, texts: list[str], concurrency: int) -> float:
    """transformers' generate on the plain model, batch = concurrency, left-padded."""
    tokenizer.padding_side = "left"
    produced = 0
    started = time.perf_counter()
    for start in range(0, len(texts), concurrency):
        encoded = tokenizer(texts[start : start + concurrency], return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            out = model.generate(
                **encoded, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        produced += (out.shape[1] - encoded["input_ids"].shape[1]) * out.shape[0]
    return produced / (time.perf_counter() - started)


def limit_at_threads(concurrency: int, per_stream: int, threads: int, device: str, dtype: str) -> float:
    """The limit on ``threads`` intra-op threads, in a child process (a thread count set and reset
    in this process would leave the in-process limit's own threads slower: service.engine.intra_op)."""
    command = [sys.executable, __file__, "--limit-run", str(concurrency), "--per-stream", str(per_stream)]
    command += ["--threads", str(threads), "--device", device, "--dtype", dtype]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return float(done.stdout.strip().splitlines()[-1])


def limit_run(args: argparse.Namespace) -> None:
    """The ``--limit-run`` child: the limit at ``--limit-run`` on ``--threads`` threads."""
    torch.set_num_threads(args.threads)  # before any parallel team opens
    model, tokenizer, world = load_toy_model()
    model = model.to(args.device, getattr(torch, args.dtype))
    limit_tokens_per_second(model, tokenizer, prompts(world, 16), 8)  # warm up
    print(limit_tokens_per_second(model, tokenizer, prompts(world, args.limit_run * args.per_stream), args.limit_run))


def turns_tokens_per_second(model, tokenizer, stacks: list, texts: list[str], concurrency: int) -> float:
    """The previous engine: each stream its own forwards (batch 1, KV cache), taking turns on a lock."""
    surgeon, lock = stacks[0][0], threading.Lock()

    def one(text: str, stack) -> int:
        ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model.device)
        with torch.inference_mode(), surgeon.apply(stack):
            with lock:
                out = model(input_ids=ids, use_cache=True)
            for step in range(NEW_TOKENS):
                token = out.logits[0, -1].argmax().view(1, 1)
                if step == NEW_TOKENS - 1:
                    break
                with lock:
                    out = model(input_ids=token, cache=out.cache, use_cache=True)
        return NEW_TOKENS

    return run_concurrently(lambda i, text: one(text, stacks[i % len(stacks)][1]), texts, concurrency)


def run_concurrently(run_one: Callable[[int, str], int], texts: list[str], concurrency: int) -> float:
    """Tokens/s with ``concurrency`` threads sharing ``texts`` (stream i runs texts i, i+N, …)."""
    counts: list[int] = []
    lock = threading.Lock()

    def worker(stream: int) -> None:
        for text in texts[stream::concurrency]:
            produced = run_one(stream, text)
            with lock:
                counts.append(produced)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


#: The server's histograms the "same" side reads around each run (sums in seconds, counts in streams).
LATENCIES = ("scalpel_time_to_first_token_seconds", "scalpel_queue_wait_seconds")
#: And its count of forwards (prefills and decode steps, a ride counted once).
FORWARDS = "scalpel_forwards"


def server_counts(metrics_port: int) -> dict[str, float]:
    """The ``LATENCIES`` histograms' ``_sum`` and ``_count`` samples and the ``FORWARDS``
    counter on the server's /metrics now."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        if family.name in (*LATENCIES, FORWARDS)
        for sample in family.samples
        if sample.name.endswith(("_sum", "_count", "_total"))
    }


def per_round_ratio(figures: dict[str, list[float]], top: str, bottom: str) -> float:
    """Median over rounds of the ratio within each round (drift of the machine cancels)."""
    return statistics.median(a / b for a, b in zip(figures[top], figures[bottom], strict=True))


def engine_tokens_per_second(
    database: str, concurrency: int, per_stream: int, device: str, dtype: str, riding: list[str]
) -> tuple[float, float]:
    """The scheduler read straight from its streams, no gRPC, in a process of its own (a second
    model in this process would slow the in-process limit measured here)."""
    command = [sys.executable, __file__, "--engine-run", str(concurrency), "--per-stream", str(per_stream)]
    command += ["--device", device, "--dtype", dtype, *riding]
    done = subprocess.run([*command, "--database", database], check=True, capture_output=True, text=True, cwd=ROOT)
    streams, aligned = done.stdout.strip().splitlines()[-1].split()
    return float(streams), float(aligned)


def engine_run(args: argparse.Namespace) -> None:
    """The ``--engine-run`` child: ``--engine-run`` streams, then aligned batches of that many."""
    concurrency, per_stream = args.engine_run, args.per_stream
    threads = serial_thread()  # as `scalpel serve` does: the scheduler's thread gets the cores
    _, _, world = load_toy_model()
    admission = {} if args.admit_within_steps is None else {"admit_within_steps": args.admit_within_steps}
    host = ModelHost(
        "toy",
        str(TOY_MODEL_DIR),
        Registry(args.database),
        device=args.device,
        dtype=args.dtype,
        intra_op_threads=threads,
        ride_prefill=args.ride_prefill,
        **admission,
    )

    def in_engine(stream: int, text: str) -> int:
        events = host.generate(0, text, max_tokens=NEW_TOKENS)
        return sum(len(event.token_ids) for event in events if isinstance(event, Token))

    freeze_startup_heap()  # as `scalpel serve` does
    run_concurrently(in_engine, prompts(world, 16), 8)
    streams = run_concurrently(in_engine, prompts(world, concurrency * per_stream), concurrency)
    texts = prompts(world, concurrency * per_stream)
    started = time.perf_counter()
    stack = host.stack(0)
    produced = 0
    for start in range(0, len(texts), concurrency):
        batch = [host.tokenizer(text, return_tensors="pt")["input_ids"][0] for text in texts[start:][:concurrency]]
        produced += sum(map(len, host.scheduler.complete(batch, stack, [Sampling(NEW_TOKENS)] * len(batch))))
    print(streams, produced / (time.perf_counter() - started))
    host.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-stream", type=int, default=2, help="requests each stream makes per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="*", default=list(CONCURRENCY))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--stream-interval", type=int, default=0, help="the server's --stream-interval")
    parser.add_argument("--server-torch-threads", type=int, help="the server's --torch-threads (default: its own)")
    parser.add_argument("--admit-within-steps", type=int, help="the servers' and the engine's --admit-within-steps")
    parser.add_argument(
        "--ride-prefill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the servers' and the in-process engine's --ride-prefill (prefill chunks in decode steps' forwards)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--engine-run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--limit-run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_run:
        engine_run(args)
        return
    if args.limit_run:
        limit_run(args)
        return
    engine_threads = args.server_torch_threads or forward_threads(torch.get_num_threads(), engine_process=True)
    model, tokenizer, world = load_toy_model()
    version_edits = edits_for_versions(model, tokenizer, world)  # derived in float32 on the CPU
    model = model.to(args.device, getattr(torch, args.dtype))
    surgeon = Surgeon(model)
    local_stacks = [(surgeon, surgeon.compile(edits)) for edits in version_edits]
    results: dict[str, float] = {}
    device = ["--device", args.device, "--dtype", args.dtype, "--stream-interval", str(args.stream_interval)]
    if args.server_torch_threads:
        device += ["--torch-threads", str(args.server_torch_threads)]
    riding = ["--ride-prefill" if args.ride_prefill else "--no-ride-prefill"]
    if args.admit_within_steps is not None:
        riding += ["--admit-within-steps", str(args.admit_within_steps)]
    device += riding
    with contextlib.ExitStack() as stack:
        served = stack.enter_context(
            serve_process(
                Path(stack.enter_context(tempfile.TemporaryDirectory())), *device, "--metrics-address", "127.0.0.1:0"
            )
        )
        client = ScalpelClient(f"127.0.0.1:{served.port}", served.secret)
        inline_served = stack.enter_context(
            serve_process(Path(stack.enter_context(tempfile.TemporaryDirectory())), *device, "--no-engine-process")
        )
        inline_client = ScalpelClient(f"127.0.0.1:{inline_served.port}", inline_served.secret)
        versions = [0]
        for edits in version_edits[1:]:
            ids = [client.create_edit("toy", edit).id for edit in edits]
            versions.append(client.create_version("toy", 0, append=ids).number)
        ttft: dict[int, list[float]] = {}  # the "same" side's times to first token
        chunks: dict[int, list[int]] = {}  # the "same" side's token messages and tokens
        server_side: dict[str, float] = {}  # the "same" side's latency sums and counts, on the server

        engine_client = client

        def via_service(spread: int, concurrency: int, client: ScalpelClient = client) -> Callable[[int, str], int]:
            same = spread == 1 and client is engine_client

            def run_one(stream: int, text: str) -> int:
                started = time.perf_counter()
                tokens = messages = 0
                for message in client.stream("toy", text, version=versions[stream % spread], max_tokens=NEW_TOKENS):
                    if message.HasField("token"):
                        if tokens == 0 and same:
                            ttft.setdefault(concurrency, []).append((time.perf_counter() - started) * 1000)
                        tokens += len(message.token.token_ids)  # several when the stream coalesced them
                        messages += 1
                if same:
                    counts = chunks.setdefault(concurrency, [0, 0])
                    counts[0], counts[1] = counts[0] + messages, counts[1] + tokens
                return tokens

            return run_one

        database = served.database_url
        warm = prompts(world, 16)
        run_concurrently(via_service(VERSIONS, 8), warm, 8)
        run_concurrently(via_service(1, 8, inline_client), warm, 8)
        limit_tokens_per_second(model, tokenizer, warm, 8)
        for concurrency in args.concurrency:
            count = concurrency * args.per_stream
            aligned: list[float] = []  # the engine process's second figure, measured with "engine"

            def engine(c: int = concurrency, aligned: list[float] = aligned) -> float:
                streams, in_batches = engine_tokens_per_second(
                    database, c, args.per_stream, args.device, args.dtype, riding
                )
                aligned.append(in_batches)
                return streams

            def same(c: int = concurrency, n: int = count) -> float:
                before = server_counts(served.metrics_port)
                rate = run_concurrently(via_service(1, c), prompts(world, n), c)
                for name, value in server_counts(served.metrics_port).items():
                    server_side[name] = server_side.get(name, 0.0) + value - before.get(name, 0.0)
                return rate

            server_side.clear()
            sides: dict[str, Callable[[], float]] = {
                "limit": lambda c=concurrency, n=count: limit_tokens_per_second(model, tokenizer, prompts(world, n), c),
                "same": same,
                "mixed": lambda c=concurrency, n=count: run_concurrently(
                    via_service(VERSIONS, c), prompts(world, n), c
                ),
                "inline": lambda c=concurrency, n=count: run_concurrently(
                    via_service(1, c, inline_client), prompts(world, n), c
                ),
                "engine": engine,
                "turns": lambda c=concurrency, n=count: turns_tokens_per_second(
                    model, tokenizer, local_stacks, prompts(world, n), c
                ),
            }
            if args.device == "cpu":  # (on a device the forward's ops do not run on these threads)
                sides["limit_at_engine_threads"] = lambda c=concurrency: limit_at_threads(
                    c, args.per_stream, engine_threads, args.device, args.dtype
                )
            figures: dict[str, list[float]] = {name: [] for name in sides}
            for round_ in range(args.rounds):
                order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
                for name in order:
                    figures[name].append(sides[name]())
            figures["aligned"] = aligned
            median = {name: statistics.median(values) for name, values in figures.items()}
            for name, value in median.items():
                results[f"c{concurrency}_{name}_tokens_per_s"] = value

            results[f"c{concurrency}_same_ratio_to_limit"] = per_round_ratio(figures, "same", "limit")
            if "limit_at_engine_threads" in figures:
                results[f"c{concurrency}_same_ratio_to_limit_at_engine_threads"] = per_round_ratio(
                    figures, "same", "limit_at_engine_threads"
                )
                results[f"c{concurrency}_limit_at_engine_threads_ratio_to_limit"] = per_round_ratio(
                    figures, "limit_at_engine_threads", "limit"
                )
            results[f"c{concurrency}_mixed_ratio_to_limit"] = per_round_ratio(figures, "mixed", "limit")
            results[f"c{concurrency}_mixed_ratio_to_same"] = per_round_ratio(figures, "mixed", "same")
            results[f"c{concurrency}_inline_ratio_to_limit"] = per_round_ratio(figures, "inline", "limit")
            results[f"c{concurrency}_same_ratio_to_inline"] = per_round_ratio(figures, "same", "inline")
            results[f"c{concurrency}_engine_ratio_to_limit"] = per_round_ratio(figures, "engine", "limit")
            results[f"c{concurrency}_aligned_ratio_to_limit"] = per_round_ratio(figures, "aligned", "limit")
            results[f"c{concurrency}_speedup_vs_turns"] = per_round_ratio(figures, "same", "turns")
            results[f"c{concurrency}_grpc_ceiling_messages_per_s"] = ceiling(concurrency)
            results[f"c{concurrency}_grpc_ceiling_ratio_to_limit"] = (
                results[f"c{concurrency}_grpc_ceiling_messages_per_s"] / median["limit"]
            )
            firsts = sorted(ttft.get(concurrency, [0.0]))
            results[f"ttft_p50_ms_c{concurrency}"] = statistics.median(firsts)
            results[f"ttft_p99_ms_c{concurrency}"] = firsts[min(len(firsts) - 1, round(0.99 * (len(firsts) - 1)))]
            results[f"c{concurrency}_ttft_ms_mean"] = statistics.fmean(firsts)
            for key, name in (("server_ttft", "scalpel_time_to_first_token_seconds"), ("queue_wait", LATENCIES[1])):
                count = server_side.get(f"{name}_count", 0.0)
                results[f"c{concurrency}_{key}_ms_mean"] = 1000 * server_side.get(f"{name}_sum", 0.0) / max(count, 1)
            messages, tokens = chunks.get(concurrency, [1, 0])
            results[f"c{concurrency}_tokens_per_message"] = tokens / messages
            forwards = server_side.get(f"{FORWARDS}_total", 0.0)
            results[f"c{concurrency}_forwards_per_1000_tokens"] = 1000 * forwards / max(tokens, 1)
            if not args.json:  # each concurrency's figures as soon as they are in
                mine = {
                    k: v
                    for k, v in results.items()
                    if k.startswith(f"c{concurrency}_") or k.endswith(f"_c{concurrency}")
                }
                report(mine, as_json=False)
        client.close()
        inline_client.close()
        for process in (served.process, inline_served.process):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    if args.json:
        report(results, as_json=True)


if __name__ == "__main__":
    main()
