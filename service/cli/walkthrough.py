"""`scalpel walkthrough`: the surgery kit on the toy model, in-process (no server, no database)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from editors import (
    Steering,
    Surgeon,
    activation_stats,
    derive_steering,
    head_ablation,
    load_edit,
    save_edit,
    weights_sha256,
)
from editors.covariance import CovarianceCache
from editors.induction import induction_head_scores, repeated_token_batch, top_heads
from editors.patching import causal_trace, recommend_edit_layer
from editors.rome import RomeHyperParams, compute_rome
from editors.toyworld import load_toy_model, reference_corpus
from editors.toyworld.counterfact import edit_cases, judge
from editors.toyworld.evaluate import evaluate_world, positive_probability, sentiment_pairs


def _metrics(label: str, values: dict[str, float]) -> None:
    print(f"  {label:<28}" + "  ".join(f"{k}={v:.3f}" for k, v in values.items()))


def run_walkthrough() -> None:
    model, tokenizer, world = load_toy_model()
    surgeon = Surgeon(model)
    base_hash = weights_sha256(model)
    print(f"toy model: {surgeon.adapter.family}, {surgeon.dims}")
    print(f"weights sha256: {base_hash[:16]}…")

    print("\n1. quality of the unedited model")
    _metrics("base", evaluate_world(model, tokenizer, world))

    print("\n2. find the induction heads and mean-ablate them")
    symbol_ids = tokenizer.convert_tokens_to_ids(world.symbols)
    batch = repeated_token_batch(symbol_ids, n=32, length=10, seed=1, prefix_id=tokenizer.bos_token_id)
    heads = top_heads(induction_head_scores(model, batch, length=10))
    print(f"  induction heads (layer, head): {heads}")
    ablations = []
    for layer in sorted({layer for layer, _ in heads}):
        stats = activation_stats(surgeon, tokenizer, reference_corpus(), f"blocks.{layer}.attn.hook_z")
        ablations.append(head_ablation(layer, [h for lay, h in heads if lay == layer], "mean", stats))
    with surgeon.apply(ablations):
        _metrics("induction heads ablated", evaluate_world(model, tokenizer, world))

    print("\n3. a sentiment steering vector from contrastive pairs")
    steering = derive_steering(surgeon, tokenizer, sentiment_pairs(world), layer=1)
    print(f"  P(positive word | neutral prompt), base: {positive_probability(model, tokenizer, world):.3f}")
    for scale in (2.0, -2.0):
        with surgeon.apply([Steering(site=steering.site, vector=steering.vector, scale=scale)]):
            print(f"  steering scale {scale:+.0f}:{'':<22}{positive_probability(model, tokenizer, world):.3f}")

    print("\n4. locate a fact by causal tracing, rewrite it with ROME, judge it")
    case = edit_cases(world, 1, seed=0)[0]
    request = case.request
    trace = causal_trace(surgeon, tokenizer, request.text, request.subject)
    layer = recommend_edit_layer(trace)
    print(f"  {request.text!r} → {trace.answer!r}; MLP effect peaks at layer {layer} on the subject token")
    covariance = CovarianceCache().get_or_compute(surgeon, tokenizer, reference_corpus(), layer)
    rome = compute_rome(surgeon, tokenizer, request, covariance, reference_corpus(), RomeHyperParams(layer=layer))
    before = judge(model, tokenizer, case)
    with surgeon.apply([rome.edit]):
        after = judge(model, tokenizer, case)
    print(f"  ROME {case.old} → {request.target} in {rome.seconds:.2f} s, a rank-one low_rank edit on {rome.edit.site}")
    for name in ("efficacy", "paraphrase", "neighbourhood"):
        print(f"  {name:<14} before {before[name]:.2f}  after {after[name]:.2f}")

    print("\n5. two versions served at once from one copy of the weights (one thread each)")
    results: dict[str, float] = {}

    def serve(name: str, scale: float) -> None:
        with surgeon.apply([Steering(site=steering.site, vector=steering.vector, scale=scale)]):
            results[name] = positive_probability(model, tokenizer, world)

    threads = [
        threading.Thread(target=serve, args=(name, scale)) for name, scale in (("cheerful", 2.0), ("gloomy", -2.0))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("  " + ", ".join(f"{name}: P(positive)={value:.3f}" for name, value in sorted(results.items())))

    print("\n6. edits are values: saved, reloaded, same identity")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "steering.safetensors"
        save_edit(steering, path)
        reloaded = load_edit(path)
    print(f"  {steering.kind} {steering.id[:16]}… reloaded as {reloaded.id[:16]}…, equal: {reloaded == steering}")

    unchanged = weights_sha256(model) == base_hash
    print(f"\nbase weights bit-identical after all of the above: {unchanged}")
    if not unchanged:
        raise SystemExit("base weights changed")
