"""Decode steps with ``transformers``' concatenating ``DynamicCache`` against Scalpel's
``GrowingCache`` (spare room per layer, the column written in place), side by side in one process.

    python bench/kv_cache.py --json
    → {"<model>_growing_ratio_to_dynamic", "<model>_dynamic_ms", "<model>_growing_ms", …}

Each case runs ``--steps`` greedy decode steps of ``rows`` left-padded rows after a
``length``-column prefix, the two caches taking turns over ``--rounds``; the ratio is the median
over rounds of the growing cache's time over the dynamic one's. Both must give the same logits
(the script fails if they differ by more than ``MAX_DIFFERENCE``, and reports the largest
difference). Cases: the toy model at 64 rows × 40 columns (the serving bench's c64 load) and a
GPT-2-small-shaped model at 32 rows × 200 columns.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt2_small import gpt2_small_shaped
from report import report

from editors.toyworld import load_toy_model
from service.engine.growing_cache import GrowingCache

PADDING = 3  # masked columns at the start of every row
#: On the CPU the logits are equal bit for bit; a GPU's attention may pick another kernel for the
#: views, which sums in another order.
MAX_DIFFERENCE = 1e-3


def decode(model: torch.nn.Module, prefix: DynamicCache, growing: bool, steps: int) -> tuple[float, torch.Tensor]:
    """Seconds per step over ``steps`` greedy steps from a copy of ``prefix``; the logits."""
    kv = [(layer.keys.clone(), layer.values.clone()) for layer in prefix.layers]
    cache = GrowingCache(kv) if growing else DynamicCache(kv)
    rows, length, device = kv[0][0].shape[0], kv[0][0].shape[-2], kv[0][0].device
    torch.manual_seed(0)
    tokens = torch.randint(4, 100, (rows, 1), device=device)
    mask = torch.ones((rows, length), dtype=torch.long, device=device)
    mask[:, :PADDING] = 0
    logits = []
    started = time.perf_counter()
    for step in range(steps):
        mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
        positions = torch.full((rows, 1), length - PADDING + step, device=device)
        out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        cache = out.cache
        logits.append(out.logits[:, -1])
        tokens = out.logits[:, -1].argmax(-1, keepdim=True)  # greedy: each step waits for the last (a GPU syncs)
    return (time.perf_counter() - started) / steps, torch.stack(logits)


def case(model: torch.nn.Module, rows: int, length: int, steps: int, rounds: int) -> dict[str, float]:
    with torch.inference_mode():
        torch.manual_seed(1)
        ids = torch.randint(4, 100, (rows, length), device=next(model.parameters()).device)
        prefix = model(input_ids=ids, use_cache=True).cache
        decode(model, prefix, True, 2)  # warm-up
        times: dict[bool, list[float]] = {True: [], False: []}
        differs = 0.0
        for _ in range(rounds):
            logits = {}
            for growing in (False, True):
                seconds, logits[growing] = decode(model, prefix, growing, steps)
                times[growing].append(seconds)
            differs = max(differs, float((logits[True] - logits[False]).abs().max()))
    if not differs <= MAX_DIFFERENCE:
        raise SystemExit(f"the growing cache's logits differ from the dynamic cache's by {differs}")
    ratio = statistics.median(g / d for g, d in zip(times[True], times[False], strict=True))
    return {
        "growing_ratio_to_dynamic": ratio,
        "dynamic_ms": statistics.median(times[False]) * 1e3,
        "growing_ms": statistics.median(times[True]) * 1e3,
        "logits_max_abs_diff": differs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the engine's on 2 cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    toy, tokenizer, _ = load_toy_model()
    results: dict[str, float] = {}
    small = gpt2_small_shaped(tokenizer, args.device)
    models = (("toy", toy.to(args.device), 64, 40), ("gpt2_small", small, 32, 200))
    for name, model, rows, length in models:
        steps = args.steps if name == "toy" else max(4, args.steps // 4)
        for key, value in case(model, rows, length, steps, args.rounds).items():
            results[f"{name}_{key}"] = value
    report(results, args.json)


if __name__ == "__main__":
    main()
