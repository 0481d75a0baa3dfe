"""MEMIT on the toy world: a batch of facts changed at once, one low-rank update per layer, bad
batches refused naming the request before any computation."""

from __future__ import annotations

import pytest
import torch

from editors import Surgeon, weights_sha256
from editors.covariance import key_covariance
from editors.errors import InvalidEditError
from editors.memit import MemitHyperParams, compute_memit
from editors.rome import RomeRequest
from editors.toyworld import reference_corpus
from editors.toyworld.counterfact import edit_cases, judge, mean_metrics


@pytest.fixture(scope="module")
def covariances(toy):
    model, tokenizer, _ = toy
    surgeon = Surgeon(model)
    return {layer: key_covariance(surgeon, tokenizer, reference_corpus(), layer)[0] for layer in (0, 1)}


def test_a_batch_of_facts_changes_at_once_and_leaves_the_neighbours(toy, covariances) -> None:
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    cases = edit_cases(world, 8, seed=2)
    before = weights_sha256(model)
    hparams = MemitHyperParams(layers=(0,))
    result = compute_memit(surgeon, tokenizer, [c.request for c in cases], covariances, reference_corpus(), hparams)
    assert weights_sha256(model) == before  # edits are returned, not applied
    (update,) = result.edits
    assert update.site == "blocks.0.mlp.W_out" and update.U.shape[1] <= len(cases)  # rank at most the batch
    assert [r["subject"] for r in update.provenance["requests"]] == [c.request.subject for c in cases]
    unedited = mean_metrics([judge(model, tokenizer, c) for c in cases])
    with surgeon.apply(result.edits):
        edited = mean_metrics([judge(model, tokenizer, c) for c in cases])
    assert unedited["efficacy"] == 0.0
    assert edited["efficacy"] >= 7 / 8 and edited["paraphrase"] >= 0.7 and edited["neighbourhood"] >= 0.8


def test_a_range_of_layers_gets_one_update_each(toy, covariances) -> None:
    model, tokenizer, world = toy
    cases = edit_cases(world, 4, seed=3)
    hparams = MemitHyperParams(layers=(0, 1), clamp_norm_factor=4.0)
    result = compute_memit(
        Surgeon(model), tokenizer, [c.request for c in cases], covariances, reference_corpus(), hparams
    )
    assert [e.site for e in result.edits] == ["blocks.0.mlp.W_out", "blocks.1.mlp.W_out"]
    with Surgeon(model).apply(result.edits):
        assert mean_metrics([judge(model, tokenizer, c) for c in cases])["efficacy"] >= 0.75


@pytest.mark.parametrize("problem", ["conflicting targets", "subject not in its prompt", "empty target", "no requests"])
def test_bad_batches_are_refused_naming_the_request_before_any_work(toy, covariances, problem) -> None:
    model, tokenizer, world = toy
    first, second = (case.request for case in edit_cases(world, 2, seed=1))
    requests, field = {
        "conflicting targets": ([first, RomeRequest(first.prompt, first.subject, second.target)], "requests[1]"),
        "subject not in its prompt": (
            [first, RomeRequest("The capital of France is", second.subject, second.target)],
            "requests[1]",
        ),
        "empty target": ([RomeRequest(first.prompt, first.subject, "")], "requests[0]"),
        "no requests": ([], "requests"),
    }[problem]
    calls = []
    with pytest.raises(InvalidEditError) as refused:
        compute_memit(
            Surgeon(model), tokenizer, requests, covariances, reference_corpus(), progress=lambda *_: calls.append(1)
        )
    assert refused.value.field.startswith(field) and not calls


def test_a_missing_covariance_is_refused(toy, covariances) -> None:
    model, tokenizer, world = toy
    cases = edit_cases(world, 1, seed=0)
    with pytest.raises(InvalidEditError, match="covariances"):
        compute_memit(
            Surgeon(model),
            tokenizer,
            [cases[0].request],
            {0: torch.eye(3)},
            reference_corpus(),
            MemitHyperParams(layers=(0,)),
        )
