"""Picking one decode step's tokens for 64 sampled rows: Scalpel's batched per-row sampler against
``transformers``' own sampling pipeline (its logits warpers and ``torch.multinomial``, the batch
sharing one set of options), side by side in one process on the same logits.

    python bench/sampling.py --json
    → {"v{vocab}_{case}_ours_ms", "v{vocab}_{case}_transformers_ms", "v{vocab}_{case}_ratio", …}

Cases: ``greedy`` (argmax), ``t07`` (temperature 0.7), ``t07_top_p09`` (and top_p 0.9),
``t07_top_k50`` (and top_k 50), ``penalties`` (temperature 0.7 with a repetition penalty of 1.2
over a 256-token prompt; transformers' ``RepetitionPenaltyLogitsProcessor``). Vocabularies of
GPT-2 (50,257) and Llama 3 (128,256). Ours gives each row its own generator and options (a row's
seeded tokens do not depend on its neighbours); transformers' draws for the whole batch at once.
Medians over ``--rounds`` rounds of ``--calls`` calls, the two sides alternating.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import report

from service.engine.sampling import RowSampler, Sampling, pick_tokens

ROWS, PROMPT = 64, 256
CASES: dict[str, tuple[Sampling, list]] = {
    "greedy": (Sampling(32), []),
    "t07": (Sampling(32, temperature=0.7), [TemperatureLogitsWarper(0.7)]),
    "t07_top_p09": (Sampling(32, temperature=0.7, top_p=0.9), [TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.9)]),
    "t07_top_k50": (Sampling(32, temperature=0.7, top_k=50), [TemperatureLogitsWarper(0.7), TopKLogitsWarper(50)]),
    "penalties": (
        Sampling(32, temperature=0.7, repetition_penalty=1.2),
        [RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.7)],
    ),
}


def timed(run: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - started) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the engine's on 2 cores)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict[str, float] = {}
    for vocab in (50257, 128256):
        # logits shaped like a language model's: a few likely tokens over a long tail
        logits = (torch.randn(ROWS, vocab) * 2.5 + torch.randn(vocab) * 2.0).to(args.device)
        prompts = torch.randint(0, vocab, (ROWS, PROMPT), device=args.device)
        for case, (sampling, warpers) in CASES.items():
            rows = [RowSampler(sampling, prompts[row].cpu()) for row in range(ROWS)]
            processors = LogitsProcessorList(warpers)

            def ours(rows: list[RowSampler] = rows, logits: torch.Tensor = logits) -> object:
                return pick_tokens(logits, rows)

            def theirs(
                processors: LogitsProcessorList = processors,
                greedy: bool = not warpers,
                logits: torch.Tensor = logits,
                prompts: torch.Tensor = prompts,
            ) -> object:
                if greedy:
                    return logits.argmax(dim=-1).tolist()
                scores = processors(prompts, logits.clone())
                return torch.multinomial(scores.softmax(dim=-1), 1).squeeze(1).tolist()

            ours(), theirs()
            times: dict[str, list[float]] = {"ours": [], "transformers": []}
            for _ in range(args.rounds):
                times["ours"].append(timed(ours, args.calls))
                times["transformers"].append(timed(theirs, args.calls))
            key = f"v{vocab}_{case}"
            results[f"{key}_ours_ms"] = statistics.median(times["ours"])
            results[f"{key}_transformers_ms"] = statistics.median(times["transformers"])
            results[f"{key}_ratio"] = statistics.median(
                a / b for a, b in zip(times["ours"], times["transformers"], strict=True)
            )
    report(results, args.json)


if __name__ == "__main__":
    main()
