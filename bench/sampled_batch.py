"""The scheduler making 64 sampled rows on a GPT-2-small-shaped model with GPT-2's vocabulary
(50,257 tokens), against ``transformers``' own ``generate`` sampling the same batch on the same
model, side by side in one process: where the toy model's 401 tokens hide the cost of picking
tokens and of the KV cache.

    python bench/sampled_batch.py --json
    → {"ours_tokens_per_s", "generate_tokens_per_s", "ours_ratio_to_generate", "rows", "new_tokens"}

Each side makes ``--new-tokens`` tokens for each of ``--rows`` 16-token prompts at temperature 0.8
and top_p 0.95 (ours through ``Scheduler.complete``: one prefill, then decode steps with every row
sampled on its own seeded generator; ``generate``: its logits warpers and ``multinomial``), the
two sides alternating over ``--rounds``; the ratio is the median of the rounds' ratios. The
weights are random: the figures are costs, not text.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt2_small import GPT2_VOCAB, gpt2_small_shaped
from report import report

from editors import Surgeon
from editors.toyworld import load_toy_model
from service.engine.sampling import Sampling
from service.engine.scheduler import Scheduler

PROMPT = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, tokenizer, _ = load_toy_model()  # (the scheduler needs a tokenizer; the ids here are its own)
    model = gpt2_small_shaped(tokenizer, args.device, GPT2_VOCAB)
    surgeon = Surgeon(model)
    stack = surgeon.compile([])
    scheduler = Scheduler(
        model, surgeon, tokenizer, "gpt2-small-shaped", eos_ids=frozenset(), intra_op_threads=args.threads
    )
    prompts = torch.randint(0, GPT2_VOCAB, (args.rows, PROMPT))
    samplings = [Sampling(args.new_tokens, temperature=0.8, top_p=0.95, seed=i) for i in range(args.rows)]

    def ours() -> int:
        return sum(map(len, scheduler.complete(list(prompts), stack, samplings)))

    def theirs() -> int:
        with torch.inference_mode():
            out = model.generate(
                prompts.to(args.device),
                attention_mask=torch.ones_like(prompts).to(args.device),
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                top_k=0,
                pad_token_id=0,
            )
        return (out.shape[1] - PROMPT) * out.shape[0]

    rates: dict[str, list[float]] = {"ours": [], "generate": []}
    try:
        for _ in range(args.rounds):
            for name, run in (("ours", ours), ("generate", theirs)):
                started = time.perf_counter()
                made = run()
                rates[name].append(made / (time.perf_counter() - started))
    finally:
        scheduler.close()
    report(
        {
            "ours_tokens_per_s": statistics.median(rates["ours"]),
            "generate_tokens_per_s": statistics.median(rates["generate"]),
            "ours_ratio_to_generate": statistics.median(
                a / b for a, b in zip(rates["ours"], rates["generate"], strict=True)
            ),
            "rows": args.rows,
            "new_tokens": args.new_tokens,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
