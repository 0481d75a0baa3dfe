"""A prefill chunk riding in the decode step's forward (``service.engine.ragged.ride``) against the two
forwards it replaces (``DecodeBatch.step``, then ``Prefill.advance``), side by side in one process.

    python bench/ragged_step.py --json
    → {"<case>_ride_ratio_to_apart", "<case>_apart_ms", "<case>_ride_ms", …}

Each case decodes ``rows`` rows (after a prefix of prompt and a few steps) while ``prompts`` new
prompts are prefilled in one chunk, under the serving bench's 8 versions (steering, head ablation,
ROME; row i under version i mod 8, newcomers too); the two ways take turns over ``--rounds`` of
``--repeats`` pairs each, every pair from the same starting state, and the ratio is the median
over rounds of the ride's median time over the apart one's. Both must give the same logits (up to
``MAX_DIFFERENCE``: the prefill's sums run in another order). Cases: the toy model with 50 rows
decoding and 13 prompts joining (the serving bench's c64 load), 56 and 8, 8 and 2; a
GPT-2-small-shaped model with 32 rows and 4 prompts.
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

from gpt2_small import gpt2_small_shaped
from report import report
from serving import VERSIONS, edits_for_versions, prompts

from editors import Surgeon
from editors.toyworld import load_toy_model
from service.engine.decode_batch import DecodeBatch, Prefill
from service.engine.ragged import can_ride, ride

MAX_DIFFERENCE = 1e-3
STEPS_BEFORE = 4  # decode steps the running rows take before the newcomers arrive


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def case(model, surgeon: Surgeon, stacks: list, ids: list[torch.Tensor], rows: int, rounds: int, repeats: int):
    """Milliseconds per pair (median per round) apart and riding, their ratio, the largest logit
    difference."""
    device = next(model.parameters()).device
    running, joining = ids[:rows], ids[rows:]
    row_stacks = [stacks[i % VERSIONS] for i in range(rows)]
    new_stacks = [stacks[(rows + i) % VERSIONS] for i in range(len(joining))]

    def start() -> tuple[DecodeBatch, object, torch.Tensor, Prefill]:
        batch, logits = DecodeBatch.prefill(model, surgeon, running, row_stacks, 0)
        table = surgeon.rows(row_stacks)
        for _ in range(STEPS_BEFORE):
            logits = batch.step(model, surgeon, table, logits.argmax(-1))
        return batch, table, logits.argmax(-1), Prefill(model, surgeon, joining, new_stacks, 0)

    times: dict[str, list[float]] = {"apart": [], "ride": []}
    differs = 0.0
    with torch.inference_mode():
        for _ in range(rounds):
            pairs: dict[str, list[float]] = {"apart": [], "ride": []}
            for _ in range(repeats):
                outputs = {}
                for way in ("apart", "ride"):
                    batch, table, tokens, prefill = start()
                    _sync(device)
                    began = time.perf_counter()
                    if way == "apart":
                        decoded = batch.step(model, surgeon, table, tokens)
                        done = prefill.advance()
                    else:
                        decoded, done = ride(model, surgeon, batch, table, tokens, prefill)
                    _sync(device)
                    pairs[way].append(time.perf_counter() - began)
                    assert done is not None
                    outputs[way] = (decoded, done[1])
                for a, b in zip(outputs["apart"], outputs["ride"], strict=True):
                    differs = max(differs, float((a.float() - b.float()).abs().max()))
            for way in times:
                times[way].append(statistics.median(pairs[way]))
    if not differs <= MAX_DIFFERENCE:
        raise SystemExit(f"a ride's logits differ from the two forwards' by {differs}")
    ratio = statistics.median(r / a for r, a in zip(times["ride"], times["apart"], strict=True))
    return {
        "ride_ratio_to_apart": ratio,
        "apart_ms": statistics.median(times["apart"]) * 1000,
        "ride_ms": statistics.median(times["ride"]) * 1000,
        "max_logit_difference": differs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (an engine process's forwards: 1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    toy, tokenizer, world = load_toy_model()
    version_edits = edits_for_versions(toy, tokenizer, world)
    results: dict[str, float] = {}
    toy = toy.to(args.device)
    big = gpt2_small_shaped(tokenizer, args.device)
    for name, model, rows, joining in (
        ("toy_50_13", toy, 50, 13),
        ("toy_56_8", toy, 56, 8),
        ("toy_8_2", toy, 8, 2),
        ("gpt2_small_32_4", big, 32, 4),
    ):
        assert can_ride(model)
        surgeon = Surgeon(model)
        edits = version_edits if model is toy else [[] for _ in version_edits]  # (the edits fit the toy's width)
        stacks = [surgeon.compile(e) for e in edits]
        ids = [
            tokenizer(t, return_tensors="pt")["input_ids"][0].to(args.device) for t in prompts(world, rows + joining)
        ]
        figures = case(model, surgeon, stacks, ids, rows, args.rounds, args.repeats)
        results |= {f"{name}_{key}": value for key, value in figures.items()}
    report(results, args.json)


if __name__ == "__main__":
    main()
