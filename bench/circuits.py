"""Circuits as graphs on the toy model (issue 35, first part): EAP and EAP-IG edge scores on the
induction task, the faithfulness of each one's top-k edges at the same k, and whether the
previous-token information's edge into the induction head's keys is found.

    python bench/circuits.py --json
    → {"edges", "eap_faithfulness_at_k", "eap_ig_faithfulness_at_k", "k",
       "induction_edge_prev_token_to_induction_k", "acdc_faithfulness", "eap_ig_vs_acdc_edge_jaccard",
       "eap_ig_passes_over_acdc_passes", …}

Pairs: a random symbol sequence repeated, against another sequence followed by the same second
half (the corrupted run keeps the queries and breaks what the first half's keys carry). Metric:
the mean log-probability of the repeated half. ``induction_edge_prev_token_to_induction_k`` is 1
when an edge into the key input of the strongest induction head (measured on repeated sequences)
is among EAP-IG's top 5. ACDC, the exact and slow reference, runs on the first ``--acdc-pairs``
pairs; EAP-IG's top edges, as many as ACDC keeps, are compared with its (Jaccard). Not built
yet: the IOI task (the toy model does not do IOI yet), hypotheses.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editors.edges import ResidualGraph, acdc, edge_attribution, edge_faithfulness  # noqa: E402
from editors.induction import induction_head_scores, repeated_token_batch, top_heads  # noqa: E402
from editors.locate import PromptPair  # noqa: E402
from editors.toyworld import load_toy_model  # noqa: E402
from editors.toyworld.locate_pairs import INDUCTION_METRIC  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--k", type=int, default=40, help="edges in each method's circuit")
    parser.add_argument("--steps", type=int, default=4, help="EAP-IG's interpolation steps")
    parser.add_argument("--acdc-pairs", type=int, default=32, help="pairs ACDC runs on (0: skip it)")
    parser.add_argument("--acdc-threshold", type=float, default=0.01, help="ACDC's share of the behaviour")
    args = parser.parse_args()
    model, tokenizer, world = load_toy_model()
    rng = random.Random(3)
    pairs = []
    for _ in range(args.pairs):
        sequence, other = rng.sample(world.symbols, 10), rng.sample(world.symbols, 10)
        pairs.append(PromptPair(" ".join(sequence + sequence), " ".join(other + sequence)))
    out: dict[str, object] = {"edges": len(ResidualGraph(model).edges), "k": args.k}
    for name, steps in (("eap", 1), ("eap_ig", args.steps)):
        started = time.perf_counter()
        scores = edge_attribution(model, tokenizer, pairs, INDUCTION_METRIC, steps=steps)
        out[f"{name}_seconds"] = round(time.perf_counter() - started, 2)
        out[f"{name}_passes"] = scores.passes
        circuit = [edge for edge, _ in scores.ranked(args.k)]
        out[f"{name}_faithfulness_at_k"] = round(
            edge_faithfulness(model, tokenizer, pairs, circuit, INDUCTION_METRIC), 3
        )
        out[f"{name}_top5"] = [edge.name for edge, _ in scores.ranked(5)]
    symbols = tokenizer.convert_tokens_to_ids(world.symbols)
    batch = repeated_token_batch(symbols, n=32, length=10, seed=1, prefix_id=tokenizer.bos_token_id)
    layer, head = top_heads(induction_head_scores(model, batch, length=10))[0]
    out["induction_head"] = f"L{layer}.H{head}"
    out["induction_edge_prev_token_to_induction_k"] = int(
        any(name.endswith(f"->L{layer}.H{head}.k") for name in out["eap_ig_top5"])  # type: ignore[union-attr]
    )
    out["clean_metric"], out["corrupted_metric"] = round(scores.clean_metric, 3), round(scores.corrupted_metric, 3)
    if args.acdc_pairs:  # the exact reference: a forward per edge
        subset = pairs[: args.acdc_pairs]
        started = time.perf_counter()
        kept, passes = acdc(model, tokenizer, subset, INDUCTION_METRIC, args.acdc_threshold)
        ig = edge_attribution(model, tokenizer, subset, INDUCTION_METRIC, steps=args.steps)
        out["acdc_seconds"] = round(time.perf_counter() - started, 1)
        out["acdc_edges"], out["acdc_passes"] = len(kept), passes
        out["acdc_faithfulness"] = round(edge_faithfulness(model, tokenizer, subset, kept, INDUCTION_METRIC), 3)
        top = {edge for edge, _ in ig.ranked(len(kept))}
        out["eap_ig_vs_acdc_edge_jaccard"] = round(len(top & set(kept)) / len(top | set(kept)), 3)
        out["eap_ig_passes_over_acdc_passes"] = round(ig.passes / passes, 3)
    print(json.dumps(out) if args.json else "\n".join(f"{k:<45} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
