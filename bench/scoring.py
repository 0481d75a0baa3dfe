"""Score's forward with logits only where they are read (``logits_to_keep``: the positions that
predict a continuation token) against the full logits it computed before, side by side in one
process on a GPT-2-small-shaped model (124M, GPT-2's vocabulary of 50,257 tokens).

    python bench/scoring.py --json
    → {"kept_ms", "full_ms", "kept_ratio_to_full", "kept_logits_mb", "full_logits_mb"}

One chunk as ``ModelHost.logprob_sums`` runs it: 32 rows of a ``--prompt``-token prompt and a
5-token continuation (right-padded, one forward); medians over ``--rounds`` alternating rounds.
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

from editors.toyworld import load_toy_model

ROWS, CONTINUATION = 32, 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, tokenizer, _ = load_toy_model()
    model = gpt2_small_shaped(tokenizer, args.device, GPT2_VOCAB)
    width = args.prompt + CONTINUATION
    ids = torch.randint(0, GPT2_VOCAB, (ROWS, width), device=args.device)
    mask = torch.ones_like(ids)
    span = torch.arange(args.prompt - 1, width - 1, device=args.device)
    times: dict[str, list[float]] = {"kept": [], "full": []}
    sizes = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, keep in (("full", 0), ("kept", span)):
                started = time.perf_counter()
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
                picked = logits[:, -CONTINUATION:].float().log_softmax(-1).sum()
                float(picked)  # (waits for a GPU)
                times[name].append(time.perf_counter() - started)
                sizes[name] = logits.numel() * logits.element_size() / 2**20
    report(
        {
            "kept_ms": statistics.median(times["kept"]) * 1e3,
            "full_ms": statistics.median(times["full"]) * 1e3,
            "kept_ratio_to_full": statistics.median(k / f for k, f in zip(times["kept"], times["full"], strict=True)),
            "kept_logits_mb": sizes["kept"],
            "full_logits_mb": sizes["full"],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
