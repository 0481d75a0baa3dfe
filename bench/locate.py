"""Locating mechanisms on the toy model: attribution against brute-force patching, and the
induction circuit found, verified and cut.

    python bench/locate.py --json   # {"induction_recall": …, "faithfulness": …, "completeness": …,
                                    #  "spearman_vs_patching": …, "forward_pass_ratio": …,
                                    #  "feature_circuit_faithfulness": …, "seconds": …}

Targets (issue 11): recall ≥ 0.9 of the known induction heads at k = their count; held-out
faithfulness ≥ 0.9; Spearman ≥ 0.8 between attribution and brute-force patching over all heads;
brute-force forwards over ours ≥ 20. Every figure is measured in this run, side by side. Keys
without a suffix are the default direction (denoising); ``_noising`` keys the other.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editors import Surgeon, load_sae  # noqa: E402
from editors.circuits import DiscoveryRequest, discover_circuit, propose_edit  # noqa: E402
from editors.edits import Op  # noqa: E402
from editors.induction import induction_head_scores, repeated_token_batch, top_heads  # noqa: E402
from editors.locate import Pairs, attribute, patching_effects, spearman  # noqa: E402
from editors.toyworld import TOY_SAE_DIR, load_toy_model  # noqa: E402
from editors.toyworld.evaluate import fact_recall, induction_accuracy  # noqa: E402
from editors.toyworld.locate_pairs import (  # noqa: E402
    CAPITALS_METRIC,
    INDUCTION_METRIC,
    capital_pairs,
    induction_pairs,
    task_pairs,
)


def _heads_only(attribution, values: torch.Tensor | None = None) -> torch.Tensor:
    values = attribution.estimates if values is None else values
    keep = [i for i, c in enumerate(attribution.components) if c.kind == "head"]
    return values[keep]


def feature_circuit(surgeon: Surgeon, tokenizer, world) -> dict[str, object]:
    """The toy SAE's features that carry a sentence's sentiment to the next: attribution against
    patching each of the strongest features alone, the circuit found and verified on held-out
    pairs, and its feature cut."""
    sae = load_sae(TOY_SAE_DIR)
    pairs, metric = task_pairs("sentiment", world, tokenizer, n=64)
    attribution = attribute(surgeon, tokenizer, pairs, metric, kinds=("features",), sae=sae)
    data = Pairs(tokenizer, pairs, metric, surgeon.device_dtype[0])
    point = f"{sae.site}.sae.acts"
    with torch.inference_mode(), surgeon.trace([point], saes=[sae]) as cache:
        surgeon.model(input_ids=data.clean, attention_mask=data.mask)
    clean = cache[point]
    with torch.inference_mode():
        base = data.score(surgeon.model(input_ids=data.corrupted, attention_mask=data.mask).logits)
    top = [(c, e) for c, e in attribution.ranked(absolute=True) if c.kind == "feature"][:20]
    truth = []
    for component, _ in top:

        def patch(x: torch.Tensor, _: object, feature: int = component.index) -> torch.Tensor:
            acts = sae.encode(x)
            error = x - sae.decode(acts)
            acts[..., feature] = clean[..., feature]
            return sae.decode(acts) + error

        with torch.inference_mode(), surgeon.apply(surgeon.compile([], [(sae.site, Op(patch))])):
            patched = data.score(surgeon.model(input_ids=data.corrupted, attention_mask=data.mask).logits)
        truth.append(float((patched - base).mean()))
    t = time.perf_counter()
    circuit = discover_circuit(surgeon, tokenizer, DiscoveryRequest(tuple(pairs), metric, kinds=("features",), sae=sae))
    seconds = time.perf_counter() - t
    (cut,) = propose_edit(surgeon, tokenizer, circuit, "feature_ablation")
    error = next(e for c, e in attribution.ranked() if c.kind == "sae_error")
    return {
        "feature_spearman_vs_patching_top20": round(
            spearman(torch.tensor([e for _, e in top]), torch.tensor(truth)), 3
        ),
        "feature_circuit_nodes": len(circuit.nodes),
        "feature_circuit_faithfulness": round(circuit.faithfulness, 3),
        "feature_circuit_completeness": round(circuit.completeness, 3),
        "feature_circuit_passes": circuit.passes,
        "feature_circuit_seconds": round(seconds, 2),
        "feature_error_term_estimate": round(error, 3),
        "feature_cut_features": len(cut.features),
        "feature_cut_removed_share": cut.provenance["cut"]["removed_share"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="induction prompt pairs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    model, tokenizer, world = load_toy_model()
    surgeon = Surgeon(model)
    symbols = tokenizer.convert_tokens_to_ids(world.symbols)
    batch = repeated_token_batch(symbols, n=32, length=10, seed=1, prefix_id=tokenizer.bos_token_id)
    known = top_heads(induction_head_scores(model, batch, length=10))
    pairs = induction_pairs(world, args.pairs, seed=3)
    out: dict[str, object] = {"known_induction_heads": [f"L{layer}.H{head}" for layer, head in known]}

    for direction in ("denoising", "noising"):  # denoising first: the default, and the headline keys
        suffix = "" if direction == "denoising" else "_noising"
        t = time.perf_counter()
        attribution = attribute(surgeon, tokenizer, pairs, INDUCTION_METRIC, batch_size=len(pairs), direction=direction)
        out[f"attribution_seconds{suffix}"] = round(time.perf_counter() - t, 3)
        out[f"attribution_passes{suffix}"] = attribution.passes
        top = {(c.layer, c.index) for c, _ in attribution.ranked(["heads"], top=len(known))}
        out[f"induction_recall{suffix}"] = len(top & set(known)) / len(known)
        t = time.perf_counter()
        actual, brute_forwards = patching_effects(
            surgeon, tokenizer, pairs, attribution.components, INDUCTION_METRIC, direction=direction
        )
        out[f"brute_force_seconds{suffix}"] = round(time.perf_counter() - t, 3)
        out[f"forward_pass_ratio{suffix}"] = round(brute_forwards / attribution.passes, 1)
        out[f"spearman_vs_patching{suffix}"] = round(
            spearman(_heads_only(attribution), _heads_only(attribution, actual)), 3
        )
        out[f"spearman_vs_patching_all_components{suffix}"] = round(spearman(attribution.estimates, actual), 3)
        integrated = attribute(surgeon, tokenizer, pairs, INDUCTION_METRIC, ("heads",), steps=4, direction=direction)
        truth, _ = patching_effects(
            surgeon, tokenizer, pairs, integrated.components, INDUCTION_METRIC, direction=direction
        )
        out[f"spearman_vs_patching_steps4{suffix}"] = round(spearman(integrated.estimates, truth), 3)
    out["brute_force_forwards"] = brute_forwards
    out["components"] = len(attribution.components)
    out["forward_pass_ratio_heads_only"] = round((2 + 16) / attribution.passes, 1)

    capitals = capital_pairs(world, tokenizer)
    for direction in ("denoising", "noising"):
        facts = attribute(surgeon, tokenizer, capitals, CAPITALS_METRIC, kinds=("heads",), direction=direction)
        truth, _ = patching_effects(
            surgeon, tokenizer, capitals, facts.components, CAPITALS_METRIC, direction=direction
        )
        key = "spearman_vs_patching_capitals" + ("" if direction == "denoising" else "_noising")
        out[key] = round(spearman(facts.estimates, truth), 3)

    t = time.perf_counter()
    circuit = discover_circuit(surgeon, tokenizer, DiscoveryRequest(tuple(pairs), INDUCTION_METRIC, kinds=("heads",)))
    out["discovery_seconds"] = round(time.perf_counter() - t, 3)
    out.update(
        circuit=[c.name for c in circuit.nodes],
        faithfulness=round(circuit.faithfulness, 3),
        completeness=round(circuit.completeness, 3),
        discovery_passes=circuit.passes,
    )
    before = induction_accuracy(model, tokenizer, world), fact_recall(model, tokenizer, world.facts)
    cut = propose_edit(surgeon, tokenizer, circuit, "ablation")
    with surgeon.apply(cut):
        after = induction_accuracy(model, tokenizer, world), fact_recall(model, tokenizer, world.facts)
    out["cut"] = cut[0].params()["provenance"]["cut"]["nodes"]
    out["induction_accuracy_before_after_cut"] = [round(before[0], 3), round(after[0], 3)]
    out["fact_recall_before_after_cut"] = [round(before[1], 3), round(after[1], 3)]
    out.update(feature_circuit(surgeon, tokenizer, world))
    out["seconds"] = round(time.perf_counter() - started, 2)

    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:<40} {value}")


if __name__ == "__main__":
    main()
