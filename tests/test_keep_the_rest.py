"""Fact edits that keep everything else (issue 38): the null-space (AlphaEdit) formulation and keep
prompts, their mechanisms on the toy model."""

from __future__ import annotations

import pytest
import torch

from editors import Surgeon
from editors.covariance import key_covariance
from editors.errors import InvalidEditError
from editors.memit import MemitHyperParams, compute_memit
from editors.null_space import null_space_projector, projected_keys
from editors.rome import RewriteRows, RomeHyperParams, compute_rome
from editors.toyworld import reference_corpus
from editors.toyworld.counterfact import batch_cases, edit_cases, relation_prompts
from editors.toyworld.evaluate import next_token_logits


def test_the_projector_spans_the_directions_the_preserved_keys_do_not_use() -> None:
    generator = torch.Generator().manual_seed(0)
    used = torch.linalg.qr(torch.randn(32, 6, generator=generator, dtype=torch.float64))[0]  # a 6-d key space
    preserved = used @ torch.randn(6, 500, generator=generator, dtype=torch.float64)
    covariance = preserved @ preserved.T / 500 + 1e-9 * torch.eye(32, dtype=torch.float64)
    P = null_space_projector(covariance, 1e-4)
    assert torch.allclose(P @ P, P, atol=1e-10) and torch.allclose(P, P.T) and round(float(P.trace())) == 26
    new_keys = torch.randn(32, 3, generator=generator, dtype=torch.float64)
    V = projected_keys(P, covariance, new_keys, ridge=1e-3)
    assert (V.T @ preserved).abs().max() < 1e-8 * (V.T @ new_keys).abs().max()  # preserved outputs unchanged
    with pytest.raises(InvalidEditError, match="no null space"):
        null_space_projector(torch.eye(4, dtype=torch.float64), 1e-4)


@pytest.fixture(scope="module")
def covariance(toy):
    model, tokenizer, _ = toy
    return key_covariance(Surgeon(model), tokenizer, reference_corpus(), 0)[0]


def test_a_null_space_memit_update_leaves_the_corpus_key_directions_alone(toy, covariance) -> None:
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    requests = [case.request for case in batch_cases(world, 6, seed=3)]
    plain, projected = (
        compute_memit(surgeon, tokenizer, requests, {0: covariance}, reference_corpus(), MemitHyperParams(**kw)).edits[
            0
        ]
        for kw in ({}, {"null_space": 1e-4})
    )
    values, vectors = torch.linalg.eigh(covariance.double())
    in_use = vectors[:, values >= 1e-4 * values.max()].float()  # the corpus keys' directions

    def reach(edit) -> float:  # how much of the update the corpus key directions see
        delta = edit.U @ edit.V.T
        return float((delta @ in_use).norm() / delta.norm())

    assert reach(projected) < 1e-4 < reach(plain)
    assert projected.provenance["hparams"]["null_space"] == 1e-4


def test_keep_prompts_hold_the_subjects_other_facts_while_the_edit_is_learned(toy, covariance) -> None:
    """The KL on a keep prompt ("The language of {} is") holds that prompt's answer distribution:
    with it, the edited subject's language distribution moves less than without."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    moved = {}
    for keep in ((), ("The language of {} is",)):
        drift = []
        for case in edit_cases(world, 4, seed=5):
            hparams = RomeHyperParams(keep_prompts=keep, keep_factor=4.0)
            edit = compute_rome(surgeon, tokenizer, case.request, covariance, reference_corpus(), hparams).edit
            prompt = f"The language of {case.request.subject} is"
            before = next_token_logits(model, tokenizer, [prompt]).log_softmax(-1)
            with surgeon.apply([edit]):
                after = next_token_logits(model, tokenizer, [prompt]).log_softmax(-1)
            drift.append(float((before.exp() * (before - after)).sum()))
        moved[keep] = sum(drift)
    assert moved[("The language of {} is",)] < 0.5 * moved[()]


def test_a_request_never_keeps_its_own_prompt(toy) -> None:
    model, tokenizer, world = toy
    case = batch_cases(world, 1, seed=0)[0]
    keep = relation_prompts(world)
    assert case.request.template in keep and len(keep) == len({f.relation for f in world.facts})
    target = tokenizer(" " + case.request.target, add_special_tokens=False)["input_ids"]
    rows = RewriteRows.build(
        Surgeon(model), tokenizer, case.request, target, reference_corpus(), RomeHyperParams(keep_prompts=keep)
    )
    assert len(rows.ids) == rows.n_rewrite + 1 + len(keep) - 1  # the rewrites, the essence, the others kept


def test_a_keep_prompt_that_asks_the_edited_fact_in_other_words_is_not_held(toy) -> None:
    """Shipped keep prompts name every relation; when an edit's prompt is a paraphrase of one of
    them, the model answers both alike, and holding it would fight the edit."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    case = batch_cases(world, 1, seed=0)[0]
    keep = ("{} has its capital in", "The language of {} is")
    target = tokenizer(" " + case.request.target, add_special_tokens=False)["input_ids"]
    rows = RewriteRows.build(
        surgeon, tokenizer, case.request, target, reference_corpus(), RomeHyperParams(keep_prompts=keep)
    )
    rows.record(surgeon, [], {})
    assert rows.keep_weight.tolist() == [0.0, 1.0]
