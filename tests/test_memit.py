"""MEMIT on the toy world: a batch of facts changed at once, one low-rank update per layer, bad
batches refused naming the request before any computation."""

from __future__ import annotations

import json

import grpc
import pytest
import torch

from editors import Surgeon, weights_sha256
from editors.covariance import key_covariance
from editors.errors import InvalidEditError
from editors.memit import MemitHyperParams, compute_memit
from editors.rome import RomeRequest
from editors.toyworld import reference_corpus
from editors.toyworld.counterfact import batch_cases, edit_cases, judge, mean_metrics
from service.api.scalpel.v1 import scalpel_pb2 as pb
from tests.test_registry import snapshot
from tests.test_service import served  # noqa: F401  (the gRPC server fixture)


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


def test_fitting_each_prompts_own_key_carries_the_edits_further(toy, covariances) -> None:
    """``prompt_key`` fits the request's own prompt's key beside the prefix-averaged one: the
    edits land with larger margins on the prompts and their held-out phrasings, still at rank at
    most the batch. Measured where the update is held back (λ = 1,000): at the default λ both
    saturate efficacy on the toy model (0.99 and 0.98)."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    cases = batch_cases(world, 12, seed=4)
    judged = {}
    for prompt_key in (True, False):
        hparams = MemitHyperParams(prompt_key=prompt_key, essence_key=False, covariance_weight=1000.0)
        result = compute_memit(surgeon, tokenizer, [c.request for c in cases], covariances, reference_corpus(), hparams)
        assert result.edits[0].U.shape[1] <= len(cases)
        with surgeon.apply(result.edits):
            judged[prompt_key] = mean_metrics([judge(model, tokenizer, c) for c in cases])
    assert judged[True]["efficacy_magnitude"] > judged[False]["efficacy_magnitude"] + 0.1
    assert judged[True]["paraphrase_magnitude"] > judged[False]["paraphrase_magnitude"] + 0.1
    assert judged[True]["neighbourhood"] >= 0.9


def test_fitting_the_bare_subjects_key_carries_the_edits_to_phrasings_that_open_with_it(toy, covariances) -> None:
    """``essence_key`` adds the subject's key with no context before it, as held-out phrasings like
    "{s} has its capital in" see it: more of those phrasings flip, with larger margins, and the
    neighbours stay."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    cases = batch_cases(world, 12, seed=5)
    judged = {}
    for essence_key in (True, False):
        hparams = MemitHyperParams(essence_key=essence_key)
        result = compute_memit(surgeon, tokenizer, [c.request for c in cases], covariances, reference_corpus(), hparams)
        assert result.edits[0].U.shape[1] <= len(cases)
        with surgeon.apply(result.edits):
            judged[essence_key] = mean_metrics([judge(model, tokenizer, c) for c in cases])
    assert judged[True]["paraphrase"] > judged[False]["paraphrase"]
    assert judged[True]["paraphrase_magnitude"] > judged[False]["paraphrase_magnitude"] + 0.15
    assert judged[True]["neighbourhood"] >= 0.95


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


def test_compute_memit_over_the_api_streams_progress_and_serves(served, toy, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811
    from service.cli.main import main

    server, admin, reader, address = served
    _, _, world = toy
    cases = edit_cases(world, 3, seed=7)
    facts = [pb.MemitFact(prompt=c.request.prompt, subject=c.request.subject, target=c.request.target) for c in cases]
    request = pb.ComputeMemitRequest(parent="models/toy", facts=facts, description="three capitals")
    with pytest.raises(grpc.RpcError) as denied:
        list(reader.edits.ComputeMemit(request))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    updates = list(admin.edits.ComputeMemit(request))
    stages = [u.stage for u in updates]
    assert stages[-1] == "done" and "values" in stages and "layers" in stages
    (made,) = updates[-1].edits
    assert made.kind == "low_rank" and made.author == "admin"
    version = admin.create_version("toy", 0, append=[made.id]).number
    for case in cases:
        said = admin.generate("toy", case.request.text, version=version, max_tokens=1).text
        assert said.strip() == case.request.target.strip()

    before = snapshot(server.registry)
    bad = pb.ComputeMemitRequest(
        parent="models/toy",
        facts=[facts[0], pb.MemitFact(prompt=facts[0].prompt, subject=facts[0].subject, target=facts[1].target)],
    )
    with pytest.raises(grpc.RpcError) as refused:
        list(admin.edits.ComputeMemit(bad))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "requests[1]" in refused.value.details()
    assert snapshot(server.registry) == before

    facts_file = tmp_path / "facts.yaml"
    facts_file.write_text(
        "\n".join(
            f"- {{prompt: '{c.request.prompt}', subject: {c.request.subject}, target: '{c.request.target}'}}"
            for c in cases
        )
    )
    monkeypatch.setenv("SCALPEL_ADDRESS", address)
    monkeypatch.setenv("SCALPEL_API_KEY", server.registry.create_key("ed", "editor", "test")[1])
    assert main(["edits", "memit", "-f", str(facts_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["edits"][0]["id"] == str(made.id)  # the same facts, the same edit
