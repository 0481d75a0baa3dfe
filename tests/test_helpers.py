"""Library helpers (statistics, steering derivation, induction scoring) reject bad input clearly."""

from __future__ import annotations

import pytest
import torch

from editors import InvalidEditError, activation_stats, derive_steering, head_ablation, neuron_ablation
from editors.toyworld import reference_corpus


def test_activation_stats_mean_and_pool_match_the_tokens_seen(toy, toy_surgeon) -> None:
    model, tokenizer, _ = toy
    texts = reference_corpus()[:40]
    site = "blocks.2.mlp.hook_post"
    stats = activation_stats(toy_surgeon, tokenizer, texts, site, pool_size=64, batch_size=7)
    with toy_surgeon.trace([site]) as cache:
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        model(**encoded)
    every_token = cache[site][encoded["attention_mask"].bool()]
    assert stats.n_tokens == every_token.shape[0]
    torch.testing.assert_close(stats.mean, every_token.mean(dim=0), atol=1e-5, rtol=1e-4)
    assert stats.pool.shape == (64, every_token.shape[1])
    # every pooled row is one of the real token rows (batched with other padding: float noise only)
    distances = torch.cdist(stats.pool, every_token).min(dim=1).values
    assert distances.max() < 0.05 < torch.cdist(stats.pool[:1], every_token[every_token.shape[0] // 2 :]).max()
    ablation = neuron_ablation(2, [5, 1], "resample", stats)
    assert ablation.neurons == (1, 5) and torch.equal(ablation.pool[:, 0], stats.pool[:, 1])


def test_stats_helpers_reject_bad_input(toy, toy_surgeon) -> None:
    _, tokenizer, _ = toy
    with pytest.raises(InvalidEditError, match="texts: is empty"):
        activation_stats(toy_surgeon, tokenizer, [], "blocks.0.attn.hook_z")
    with pytest.raises(InvalidEditError, match="site: unknown site"):
        activation_stats(toy_surgeon, tokenizer, ["a"], "blocks.0.attention")
    with pytest.raises(InvalidEditError, match=r"stats: mode .mean. needs statistics of blocks\.1\.attn\.hook_z"):
        head_ablation(1, [0], "mean")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pairs": []}, "pairs: expected pairs"),
        ({"pairs": "good bad"}, "pairs: expected pairs"),
        ({"pairs": [("good", "")]}, r"pairs\[0\]: is not a pair"),
        ({"pairs": [("a", "b", "c")]}, r"pairs\[0\]: is not a pair"),
        ({"layer": 4}, "layer: 4 is out of range"),
        ({"method": "ica"}, "method: unknown value 'ica'"),
        ({"point": "attn.hook_z"}, "point: unknown value"),
    ],
)
def test_derive_steering_rejects_bad_requests(toy, toy_surgeon, kwargs, message) -> None:
    _, tokenizer, _ = toy
    request = {"pairs": [("the food was great", "the food was awful")], "layer": 1, **kwargs}
    with pytest.raises(InvalidEditError, match=message):
        derive_steering(toy_surgeon, tokenizer, **request)
