"""The prefix cache: requests sharing a system prompt, and its cost where nothing is shared.

    python bench/prefix_cache.py --json
    → {"shared_ttft_ms_off", "shared_ttft_ms_on", "shared_ttft_ratio", "shared_tokens_per_s_ratio",
       "shared_prefilled_tokens_off", "shared_prefilled_tokens_on", "burst_ttft_ms_{off,nowait,on}",
       "burst_prefilled_tokens_{off,nowait,on}", "burst_ttft_ms_ratio_on_to_{off,nowait}",
       "distinct_tokens_per_s_ratio", …}

Both sides are the same :class:`~service.engine.scheduler.Scheduler` in this process (``--device``),
one with the default prefix cache, one with ``prefix_cache_bytes=0``; each round runs both (order
alternating) and a ratio is the median over rounds of on / off within a round.

- **shared**: a GPT-2-small-shaped model (124M, randomly initialised: no download), float32.
  ``--concurrency`` client threads send ``--requests`` requests in all; each prompt is the same
  ``--shared``-token system prompt followed by a question of its own (``--own`` tokens); greedy,
  16 new tokens. Reported: the mean time to first token, tokens/s and prompt tokens prefilled
  (the prompt tokens less those taken from the cache). Each round starts with an empty cache, so
  the first request of a round pays the full prefill.
- **burst**: the same model and prompts, but the requests arrive together (``--requests`` threads
  released at once) while ``--busy`` other streams decode, so the scheduler admits them together
  into one prefill. Sides: no cache (off), the cache without newcomers waiting for a prefill's
  blocks (``nowait``: :meth:`PendingPrefixes.should_wait` answers no, as before
  service.engine.shared_prefixes), and the default (on). Reported: the burst's mean time to first token,
  prompt tokens prefilled, and the busy streams' longest gap between two tokens.
- **distinct**: the serving bench's shape on the toy model (64 streams, 4 requests each of 32
  greedy tokens, prompts of 25 tokens that share nothing): the cost of storing every prompt's
  blocks when none is ever reused, as tokens/s on / off.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gpt2_small import gpt2_small_shaped
from bench.report import report
from editors import Surgeon
from editors.toyworld import load_toy_model
from service.engine.defaults import PREFIX_CACHE_BYTES
from service.engine.scheduler import Sampling, Scheduler, Token
from service.engine.shared_prefixes import PendingPrefixes
from service.engine.startup_heap import freeze_startup_heap


def run(scheduler: Scheduler, stack, prompts: list[torch.Tensor], concurrency: int, new_tokens: int) -> dict:
    """Every prompt through ``scheduler`` from ``concurrency`` threads; time to first token (mean,
    ms), tokens/s and prompt tokens prefilled."""
    pending = list(prompts)
    lock = threading.Lock()
    ttfts: list[float] = []
    made = [0]
    hits_before = scheduler.prefix_cache.hit_tokens

    def client() -> None:
        while True:
            with lock:
                if not pending:
                    return
                prompt = pending.pop(0)
            sent, first = time.perf_counter(), None
            for event in scheduler.generate(prompt, stack, Sampling(max_tokens=new_tokens, ignore_eos=True)):
                if isinstance(event, Token):
                    first = first or time.perf_counter()
                    with lock:
                        made[0] += len(event.token_ids)
            with lock:
                ttfts.append(first - sent)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    prompt_tokens = sum(len(p) for p in prompts)
    return {
        "ttft_ms": 1000 * statistics.mean(ttfts),
        "tokens_per_s": made[0] / wall,
        "prefilled_tokens": prompt_tokens - (scheduler.prefix_cache.hit_tokens - hits_before),
    }


def side_by_side(model, tokenizer, prompts: list[torch.Tensor], concurrency: int, new_tokens: int, rounds: int):
    """Per round, the cached and the uncached scheduler's figures (each with a fresh cache)."""
    surgeon = Surgeon(model)
    stack = surgeon.compile([])
    context = model.config.n_positions
    figures: dict[bool, list[dict]] = {True: [], False: []}
    for round_ in range(rounds + 1):  # round 0 warms up and is dropped
        for cached in (True, False) if round_ % 2 else (False, True):
            scheduler = Scheduler(
                model,
                surgeon,
                tokenizer,
                f"cache-{cached}",
                context,
                prefix_cache_bytes=PREFIX_CACHE_BYTES if cached else 0,
            )
            try:
                result = run(scheduler, stack, prompts, concurrency, new_tokens)
            finally:
                scheduler.close()
            if round_:
                figures[cached].append(result)
    return figures


def burst(scheduler: Scheduler, stack, prompts: list[torch.Tensor], busy: list[torch.Tensor], new_tokens: int) -> dict:
    """``prompts`` sent at once while ``busy`` streams decode: the burst's mean time to first token
    (ms), prompt tokens prefilled, and the busy streams' longest gap between two messages (ms)."""
    background = [scheduler.generate(p, stack, Sampling(max_tokens=100_000, ignore_eos=True)) for p in busy]
    for stream in background:
        next(stream)  # decoding
    gaps = [0.0] * len(busy)
    stop = threading.Event()

    def watch(row: int) -> None:
        last = time.perf_counter()
        for _ in background[row]:
            now = time.perf_counter()
            gaps[row], last = max(gaps[row], now - last), now
            if stop.is_set():
                return

    watchers = [threading.Thread(target=watch, args=(row,)) for row in range(len(busy))]
    for watcher in watchers:
        watcher.start()
    barrier = threading.Barrier(len(prompts))
    ttfts = [0.0] * len(prompts)
    hits_before = scheduler.prefix_cache.hit_tokens

    def client(i: int) -> None:
        barrier.wait()
        sent = time.perf_counter()
        for event in scheduler.generate(prompts[i], stack, Sampling(max_tokens=new_tokens, ignore_eos=True)):
            if isinstance(event, Token) and not ttfts[i]:
                ttfts[i] = time.perf_counter() - sent

    clients = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    stop.set()
    for watcher in watchers:
        watcher.join()
    for stream in background:
        stream.close()
    return {
        "ttft_ms": 1000 * statistics.mean(ttfts),
        "prefilled_tokens": sum(len(p) for p in prompts) - (scheduler.prefix_cache.hit_tokens - hits_before),
        "busy_gap_ms": 1000 * max(gaps),
    }


def burst_side_by_side(model, tokenizer, prompts, busy, new_tokens: int, rounds: int) -> dict[str, list[dict]]:
    """Per round, the burst's figures for each side: off, nowait, on (order rotating)."""
    surgeon = Surgeon(model)
    stack = surgeon.compile([])
    sides = ["off", "nowait", "on"]
    figures: dict[str, list[dict]] = {side: [] for side in sides}
    waits = PendingPrefixes.should_wait
    for round_ in range(rounds + 1):  # round 0 warms up and is dropped
        for side in sides[round_ % 3 :] + sides[: round_ % 3]:
            PendingPrefixes.should_wait = waits if side == "on" else (lambda *_: False)
            scheduler = Scheduler(
                model,
                surgeon,
                tokenizer,
                f"burst-{side}",
                model.config.n_positions,
                prefix_cache_bytes=0 if side == "off" else PREFIX_CACHE_BYTES,
            )
            try:
                result = burst(scheduler, stack, prompts, busy, new_tokens)
            finally:
                scheduler.close()
                PendingPrefixes.should_wait = waits
            if round_:
                figures[side].append(result)
    return figures


def ratio(figures: dict[bool, list[dict]], key: str) -> float:
    return statistics.median(on[key] / off[key] for on, off in zip(figures[True], figures[False], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=int, default=512, help="tokens of the shared system prompt")
    parser.add_argument("--own", type=int, default=16, help="tokens of each request's own question")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--busy", type=int, default=8, help="streams decoding while a burst arrives")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.shared + args.own + 16 > 1024 or min(args.shared, args.own, args.requests, args.concurrency) < 1:
        parser.error("--shared + --own + 16 must fit 1024 positions, and every count must be positive")
    toy, tokenizer, world = load_toy_model()
    model = gpt2_small_shaped(tokenizer, args.device)
    toy = toy.to(args.device)
    freeze_startup_heap()
    generator = torch.Generator().manual_seed(1)
    system = torch.randint(4, len(tokenizer), (args.shared,), generator=generator)
    shared_prompts = [
        torch.cat([system, torch.randint(4, len(tokenizer), (args.own,), generator=generator)]).to(args.device)
        for _ in range(args.requests)
    ]
    shared = side_by_side(model, tokenizer, shared_prompts, args.concurrency, 16, args.rounds)
    busy = [torch.randint(4, len(tokenizer), (32,), generator=generator).to(args.device) for _ in range(args.busy)]
    bursts = burst_side_by_side(model, tokenizer, shared_prompts, busy, 16, args.rounds)
    rng = random.Random(0)
    texts = [" ".join((seq := rng.sample(world.symbols, 12)) + seq) for _ in range(256)]
    distinct_prompts = [tokenizer(t, return_tensors="pt")["input_ids"][0].to(args.device) for t in texts]
    distinct = side_by_side(toy, tokenizer, distinct_prompts, 64, 32, args.rounds)
    results: dict[str, float] = {}
    for side, name in ((False, "off"), (True, "on")):
        for key in ("ttft_ms", "tokens_per_s", "prefilled_tokens"):
            results[f"shared_{key}_{name}"] = statistics.median(r[key] for r in shared[side])
        for key in ("tokens_per_s", "prefilled_tokens"):
            results[f"distinct_{key}_{name}"] = statistics.median(r[key] for r in distinct[side])
    for side, figures in bursts.items():
        for key in ("ttft_ms", "prefilled_tokens", "busy_gap_ms"):
            results[f"burst_{key}_{side}"] = statistics.median(r[key] for r in figures)
    for side in ("off", "nowait"):
        for key in ("ttft_ms", "busy_gap_ms"):
            results[f"burst_{key}_ratio_on_to_{side}"] = statistics.median(
                on[key] / other[key] for on, other in zip(bursts["on"], bursts[side], strict=True)
            )
    results["shared_ttft_ratio"] = ratio(shared, "ttft_ms")
    results["shared_tokens_per_s_ratio"] = ratio(shared, "tokens_per_s")
    results["distinct_tokens_per_s_ratio"] = ratio(distinct, "tokens_per_s")
    report(results, args.json)


if __name__ == "__main__":
    main()
