"""Rebasing a version onto a successor checkpoint (issue 36): every kind of edit, side by side.

    python bench/rebase.py --json
    → {"edits_rebased", "edits_held", "steering_cosine_min", "circuit_jaccard_min",
       "rebase_seconds_per_edit", "drift"}

The version on the toy model: ROME edits of four capitals (with the toy's shipped keep prompts),
a MEMIT batch of four more, two derived steering vectors (sentiment at layers 1 and 2), the
located induction cut, a zero head ablation and a low-rank delta without provenance. The
successor is the toy model trained 150 steps on a world with six capitals moved
(``scalpel toyworld successor``). ``edits_held``: fact edits whose requests are all still the
successor's top-1 answer with the rebased edits in; ``fact_edits_working_unrebased``: those whose
old edit, carried as it is, still gives every answer. ``--steps`` and ``--lr`` move the successor
further from the base.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from editors import HeadAblation, LowRank, Surgeon
from editors.circuits import DiscoveryRequest, discover_circuit, propose_edit
from editors.covariance import CovarianceCache
from editors.memit import MemitHyperParams, compute_memit
from editors.rebase import rebase_edits
from editors.rome import RomeHyperParams, compute_rome
from editors.steering import derive_steering
from editors.toyworld import load_toy_model, reference_corpus
from editors.toyworld.counterfact import batch_cases, edit_cases, relation_prompts
from editors.toyworld.evaluate import sentiment_pairs
from editors.toyworld.locate_pairs import INDUCTION_METRIC, induction_pairs
from editors.toyworld.successor import train_successor


def version_edits(surgeon: Surgeon, tokenizer, world) -> list:
    corpus, keep = reference_corpus(), relation_prompts(world)
    covariance = CovarianceCache().get_or_compute(surgeon, tokenizer, corpus, 0)
    edits: list = []
    capitals = [case for case in edit_cases(world, 20, seed=31) if case.relation == "capital"][:4]
    for case in capitals:
        result = compute_rome(
            surgeon,
            tokenizer,
            case.request,
            covariance,
            corpus,
            RomeHyperParams(keep_prompts=keep),
            edits,
            show_progress=False,
        )
        edits.append(result.edit)
    batch = [
        c.request
        for c in batch_cases(world, 12, seed=32)
        if c.request.subject not in {e.provenance["request"]["subject"] for e in edits}
    ][:4]
    edits += compute_memit(
        surgeon, tokenizer, batch, {0: covariance}, corpus, MemitHyperParams(keep_prompts=keep), edits
    ).edits
    edits += [derive_steering(surgeon, tokenizer, sentiment_pairs(world), layer=layer) for layer in (1, 2)]
    request = DiscoveryRequest(tuple(induction_pairs(world, 32, seed=3)), INDUCTION_METRIC, kinds=("heads",))
    edits += propose_edit(surgeon, tokenizer, discover_circuit(surgeon, tokenizer, request, edits), edits=edits)
    generator = torch.Generator().manual_seed(0)
    edits += [
        HeadAblation(layer=2, heads=(1,)),
        LowRank(
            site="blocks.3.mlp.W_out",
            U=torch.randn(128, 1, generator=generator) * 1e-3,
            V=torch.randn(512, 1, generator=generator),
        ),
    ]
    return edits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--steps", type=int, default=150, help="the successor's training steps")
    parser.add_argument("--lr", type=float, default=3e-4, help="the successor's learning rate")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer, world = load_toy_model()
    surgeon = Surgeon(model)
    edits = version_edits(surgeon, tokenizer, world)
    with tempfile.TemporaryDirectory() as directory:
        train_successor(Path(directory), steps=args.steps, lr=args.lr)
        new_model, _, _ = load_toy_model(Path(directory))
        successor, corpus, cache = Surgeon(new_model), reference_corpus(Path(directory)), CovarianceCache()
        for layer in (0,):  # computed before the clock starts, as a service caches them
            cache.get_or_compute(successor, tokenizer, corpus, layer)
        started = time.perf_counter()
        rebased = rebase_edits(
            surgeon,
            successor,
            tokenizer,
            edits,
            corpus,
            lambda layer: cache.get_or_compute(successor, tokenizer, corpus, layer),
        )
        seconds = time.perf_counter() - started
    summary = rebased.summary()
    out = {
        "edits_rebased": len(edits),
        "edits_held": summary["fact_edits_held"],
        "fact_edits": summary["fact_edits"],
        "steering_cosine_min": summary["steering_cosine_min"],
        "circuit_jaccard_min": summary["circuit_jaccard_min"],
        "rebase_seconds_per_edit": round(seconds / len(edits), 3),
        "fact_edits_working_unrebased": sum(
            d["metrics"].get("efficacy_carried", 0) == 1.0 for d in rebased.as_dict()["drift"]
        ),
        "actions": {a: summary[a] for a in ("recomputed", "carried", "flagged")},
        "drift": rebased.as_dict()["drift"],
    }
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
