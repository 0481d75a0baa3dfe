"""What the surgery kit must show on the toy model (issue: behaviour on the toy model)."""

from __future__ import annotations

import pytest
import torch

from editors import DirectionalAblation, Steering, activation_stats, derive_steering, head_ablation, weights_sha256
from editors.induction import induction_head_scores, repeated_token_batch, top_heads
from editors.toyworld import reference_corpus
from editors.toyworld.evaluate import (
    evaluate_world,
    fact_recall,
    induction_accuracy,
    positive_probability,
    sentiment_pairs,
)
from tests.test_surgeon import _read_residuals


@pytest.fixture(scope="module")
def base_metrics(toy) -> dict[str, float]:
    return evaluate_world(*toy)


def test_ablating_the_induction_heads_kills_induction_but_not_facts(toy, toy_surgeon, base_metrics) -> None:
    model, tokenizer, world = toy
    symbols = tokenizer.convert_tokens_to_ids(world.symbols)
    batch = repeated_token_batch(symbols, n=32, length=10, seed=1, prefix_id=tokenizer.bos_token_id)
    scores = induction_head_scores(model, batch, length=10)
    heads = top_heads(scores)
    assert heads, f"no induction heads found; scores:\n{scores}"
    # control: on sequences that do not repeat, the same heads do not attend that way
    shuffled = torch.cat([batch[:, :11], batch[torch.randperm(32), 11:]], dim=1)
    control = induction_head_scores(model, shuffled, length=10)
    assert all(control[layer, head] < scores[layer, head] / 2 for layer, head in heads)

    edits = []
    for layer in sorted({layer for layer, _ in heads}):
        stats = activation_stats(toy_surgeon, tokenizer, reference_corpus()[:500], f"blocks.{layer}.attn.hook_z")
        edits.append(head_ablation(layer, [h for lay, h in heads if lay == layer], "mean", stats))
    with toy_surgeon.apply(edits):
        ablated_induction = induction_accuracy(model, tokenizer, world)
        ablated_facts = fact_recall(model, tokenizer, world.facts)
    assert base_metrics["induction_accuracy"] - ablated_induction >= 0.50, (heads, ablated_induction)
    assert ablated_facts >= 0.90


@pytest.mark.parametrize("method", ["mean_diff", "pca"])
def test_sentiment_steering_moves_neutral_continuations_both_ways(toy, toy_surgeon, method) -> None:
    model, tokenizer, world = toy
    derived = derive_steering(toy_surgeon, tokenizer, sentiment_pairs(world), layer=1, method=method)
    assert derived.provenance["method"] == method and len(derived.provenance["pairs"]) == len(sentiment_pairs(world))
    base = positive_probability(model, tokenizer, world)
    results = {}
    for scale in (2.0, -2.0):
        with toy_surgeon.apply([Steering(site=derived.site, vector=derived.vector, scale=scale)]):
            results[scale] = positive_probability(model, tokenizer, world)
    assert results[2.0] > base + 0.05
    assert results[-2.0] < base - 0.05


def test_directional_ablation_on_the_toy_model(toy, toy_surgeon) -> None:
    model, tokenizer, world = toy
    derived = derive_steering(toy_surgeon, tokenizer, sentiment_pairs(world), layer=1)
    unit = derived.vector / derived.vector.norm()
    ids = tokenizer([f"{p} ." for p, _ in sentiment_pairs(world)[:8]], return_tensors="pt")["input_ids"]
    layers = (1, 2)
    ablated = _read_residuals(
        model, toy_surgeon, layers, ids, [DirectionalAblation(direction=derived.vector, layers=layers)]
    )
    plain = _read_residuals(model, toy_surgeon, layers, ids, [])
    for name, resid in ablated.items():
        assert (resid @ unit).abs().max() <= 1e-5 * resid.norm(dim=-1).max()
        assert (plain[name] @ unit).abs().max() > 0.1


def test_base_weights_are_bit_identical_after_all_of_it(toy, toy_surgeon) -> None:
    model, tokenizer, world = toy
    before = weights_sha256(model)
    derived = derive_steering(toy_surgeon, tokenizer, sentiment_pairs(world), layer=1)
    with toy_surgeon.apply([derived, DirectionalAblation(direction=derived.vector, layers=(0, 3))]):
        evaluate_world(model, tokenizer, world)
    assert weights_sha256(model) == before
