"""ROME fact edits, the key-covariance cache and the CounterFact-style evaluation."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from editors import InvalidEditError, LowRank, artifact_blobs_by_hash, edit_from_json, weights_sha256
from editors.covariance import CovarianceCache, key_covariance
from editors.edits import Op
from editors.errors import Cancelled
from editors.patching import subject_token_span
from editors.rome import RomeHyperParams, RomeRequest, compute_rome
from editors.toyworld import reference_corpus
from editors.toyworld.counterfact import edit_cases, judge, mean_metrics


@pytest.fixture(scope="module")
def covariance(toy, toy_surgeon, tmp_path_factory) -> torch.Tensor:
    cache = CovarianceCache(tmp_path_factory.mktemp("covariance"))
    return cache.get_or_compute(toy_surgeon, toy[1], reference_corpus(), RomeHyperParams().layer)


def test_key_covariance_is_cached_by_model_layer_and_corpus(toy, toy_surgeon, tmp_path) -> None:
    tokenizer = toy[1]
    texts = reference_corpus()[:200]
    cache = CovarianceCache(tmp_path)
    seen: list[tuple[int, int]] = []
    first = cache.get_or_compute(toy_surgeon, tokenizer, texts, 1, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1] == (200, 200)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    again = cache.get_or_compute(toy_surgeon, tokenizer, texts, 1, progress=lambda d, t: seen.append((0, 0)))
    assert torch.equal(first.matrix, again.matrix) and (0, 0) not in seen  # loaded, not recomputed
    assert again.n_tokens == first.n_tokens and (again.layer, again.model_sha256) == (1, toy_surgeon.weights_sha256)
    cache.get_or_compute(toy_surgeon, tokenizer, texts[:100], 1)
    cache.get_or_compute(toy_surgeon, tokenizer, texts, 2)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    direct, n_tokens = key_covariance(toy_surgeon, tokenizer, texts, 1)
    torch.testing.assert_close(first.matrix, direct)
    assert n_tokens == first.n_tokens > 1000
    torch.testing.assert_close(first.matrix, first.matrix.T)
    assert torch.linalg.eigvalsh(first.matrix.double()).min() > -1e-6


@pytest.mark.parametrize(
    ("request_", "hparams", "field"),
    [
        (RomeRequest("The capital of {} is {}", "Riia", "Muford"), RomeHyperParams(), "prompt"),
        (RomeRequest("", "Riia", "Muford"), RomeHyperParams(), "prompt"),
        (RomeRequest("The capital of Riia is", "Atlantis", "Muford"), RomeHyperParams(), "subject"),
        (RomeRequest("The capital of {} is", "", "Muford"), RomeHyperParams(), "subject"),
        (RomeRequest("The capital of {} is", "Riia", "  "), RomeHyperParams(), "target"),
        (RomeRequest("The capital of {} is", "Riia", "Qwxyzzy"), RomeHyperParams(), "target"),
        (RomeRequest("The capital of {} is", "Riia", "Muford"), RomeHyperParams(layer=9), "layer"),
        (RomeRequest("The capital of {} is", "Riia", "Muford"), RomeHyperParams(lr=float("nan")), "lr"),
        (RomeRequest("The capital of {} is", "Riia", "Muford"), RomeHyperParams(kl_direction="up"), "kl_direction"),
        (RomeRequest("The capital of {} is", "Riia", "Muford"), RomeHyperParams(clamp_radius=""), "clamp_radius"),
        (RomeRequest("The capital of {} is", "Riia", "Muford"), RomeHyperParams(denominator_key=1), "denominator_key"),
        (RomeRequest("The capital of {} is", "Riia", "Muford"), RomeHyperParams(essence_weight=1.5), "essence_weight"),
        (
            RomeRequest("The capital of {} is", "Riia", "Muford"),
            RomeHyperParams(weight_decay_form="cubic"),
            "weight_decay_form",
        ),
        (RomeRequest("The capital of {} is", "Riia", "Muford"), RomeHyperParams(null_space=1.0), "null_space"),
        (
            RomeRequest("The capital of {} is", "Riia", "Muford"),
            RomeHyperParams(null_space_ridge=0),
            "null_space_ridge",
        ),
        (RomeRequest("The capital of {} is", "Riia", "Muford"), RomeHyperParams(keep_prompts="x {}"), "keep_prompts"),
        (
            RomeRequest("The capital of {} is", "Riia", "Muford"),
            RomeHyperParams(keep_prompts=("x",)),
            "keep_prompts[0]",
        ),
        (RomeRequest("The capital of {} is", "Riia", "Muford"), RomeHyperParams(keep_factor=-1), "keep_factor"),
    ],
)
def test_bad_requests_fail_before_any_computation(toy, toy_surgeon, request_, hparams, field) -> None:
    with pytest.raises(InvalidEditError) as caught:
        compute_rome(toy_surgeon, toy[1], request_, torch.zeros(1), reference_corpus(), hparams)
    assert caught.value.field == field  # the (wrong-shaped) covariance was never reached


def test_a_rome_edit_rewrites_the_fact_and_spares_its_neighbours(toy, toy_surgeon, covariance) -> None:
    model, tokenizer, world = toy
    case = edit_cases(world, 1, seed=3)[0]
    before_hash = weights_sha256(model)
    before = judge(model, tokenizer, case)
    assert before["efficacy"] == 0.0
    result = compute_rome(toy_surgeon, tokenizer, case.request, covariance, reference_corpus())
    edit = result.edit
    assert isinstance(edit, LowRank) and edit.U.shape[1] == 1 and edit.site == "blocks.0.mlp.W_out"
    assert edit.provenance["request"] == case.request.as_dict() and edit.provenance["method"] == "rome"
    with toy_surgeon.apply([edit]):
        after = judge(model, tokenizer, case)
    assert after["efficacy"] == 1.0 and after["neighbourhood"] >= 0.8
    # held-out phrasings move towards the new object too (per-case paraphrase wins vary; the
    # 20-edit floors are asserted on the CLI below)
    assert after["paraphrase_magnitude"] > before["paraphrase_magnitude"] + 0.5
    assert weights_sha256(model) == before_hash
    assert edit_from_json(edit.to_json(), artifact_blobs_by_hash(edit)).id == edit.id


def _mlp_out_at_subject(surgeon, tokenizer, request: RomeRequest, edits: list) -> torch.Tensor:
    _, end = subject_token_span(tokenizer, request.text, request.subject)
    seen: dict[str, torch.Tensor] = {}

    def record(x: torch.Tensor, _: object) -> torch.Tensor:
        seen["v"] = x[0, end - 1].double()
        return x

    ids = tokenizer(request.text, return_tensors="pt")["input_ids"]
    with (
        torch.inference_mode(),
        surgeon.apply(surgeon.compile(edits, extra_ops=[("blocks.0.hook_mlp_out", Op(record))])),
    ):
        surgeon.model(input_ids=ids)
    return seen["v"]


def test_the_denominator_key_sets_where_the_update_delivers_its_value_exactly(toy, toy_surgeon, covariance) -> None:
    """With ``denominator_key="prompt"`` (the reference code's) the edit adds exactly the optimised
    δ to the MLP output at the prompt's subject token; the default scales it to the prefix-averaged
    key instead, so the prompt gets another amount. The other switches each give another edit."""
    _, tokenizer, world = toy
    request = edit_cases(world, 1, seed=3)[0].request
    corpus = reference_corpus()
    before = _mlp_out_at_subject(toy_surgeon, tokenizer, request, [])
    added = {}
    for key in ("prefixed", "prompt"):
        result = compute_rome(toy_surgeon, tokenizer, request, covariance, corpus, RomeHyperParams(denominator_key=key))
        change = _mlp_out_at_subject(toy_surgeon, tokenizer, request, [result.edit]) - before
        added[key] = change.norm().item() / result.delta_norm
    assert added["prompt"] == pytest.approx(1.0, rel=1e-3)
    assert abs(added["prefixed"] - 1.0) > 0.005  # 5× the exact one's tolerance (0.014 on the toy model)
    variants = [{}, {"kl_direction": "new_init", "kl_factor": 1.0}, {"kl_factor": 1.0}, {"clamp_radius": "prompt"}]
    ids = {
        compute_rome(toy_surgeon, tokenizer, request, covariance, corpus, RomeHyperParams(**v)).edit.id
        for v in variants
    }
    assert len(ids) == len(variants)


def test_the_bare_subjects_key_carries_the_edit_to_phrasings_that_open_with_the_subject(
    toy, toy_surgeon, covariance
) -> None:
    """``essence_weight`` mixes the subject's key with nothing before it into k*: held-out phrasings
    such as "{s} has its capital in" see that key, so the edit reaches them with a larger margin,
    and the neighbours keep their answers."""
    model, tokenizer, world = toy
    cases = [c for c in edit_cases(world, 6, seed=4) if any(p.startswith(c.request.subject) for p in c.paraphrases)]
    assert cases
    judged = {}
    for weight in (0.4, 0.0):
        rows = []
        for case in cases:
            edit = compute_rome(
                toy_surgeon,
                tokenizer,
                case.request,
                covariance,
                reference_corpus(),
                RomeHyperParams(essence_weight=weight),
            ).edit
            opening = dataclasses.replace(
                case, paraphrases=tuple(p for p in case.paraphrases if p.startswith(case.request.subject))
            )
            with toy_surgeon.apply([edit]):
                rows.append(judge(model, tokenizer, opening))
        judged[weight] = mean_metrics(rows)
    assert judged[0.4]["paraphrase_magnitude"] > judged[0.0]["paraphrase_magnitude"] + 0.1
    assert judged[0.4]["paraphrase"] >= judged[0.0]["paraphrase"] and judged[0.4]["neighbourhood"] >= 0.98


def test_a_filled_in_prompt_is_the_same_request_as_its_template() -> None:
    filled = RomeRequest("The capital of Riia is", "Riia", "Muford")
    assert filled.template == "The capital of {} is" and filled.text == "The capital of Riia is"


def test_sequential_edits_see_the_earlier_ones(toy, toy_surgeon, covariance) -> None:
    model, tokenizer, world = toy
    first, second = edit_cases(world, 2, seed=11)
    corpus = reference_corpus()
    e1 = compute_rome(toy_surgeon, tokenizer, first.request, covariance, corpus).edit
    e2 = compute_rome(toy_surgeon, tokenizer, second.request, covariance, corpus, edits=[e1]).edit
    alone = compute_rome(toy_surgeon, tokenizer, second.request, covariance, corpus).edit
    assert e2.id != alone.id  # computed on the model as edited by e1
    with toy_surgeon.apply([e1, e2]):
        assert judge(model, tokenizer, first)["efficacy"] == 1.0
        assert judge(model, tokenizer, second)["efficacy"] == 1.0


def test_rome_eval_cli_meets_the_floors(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "rome", "eval", "--edits", "10", "--seed", "0", "--json", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "SCALPEL_DATA_DIR": str(tmp_path)},
    )
    summary = json.loads(result.stdout)
    # the shipped defaults (keep prompts, issue 38) on seed 0 read, over 10 edits (20 take twice as
    # long and read paraphrase 0.90, edited subjects 0.675), paraphrase 0.95 at neighbourhood 1.00,
    # other relations 0.997 kept and the edited subjects' own other facts 0.80; `bench/rome.py`
    # measures the full set (issue 13's paraphrase bar of 0.95 was the first toy model's)
    assert summary["efficacy"] >= 0.95 and summary["paraphrase"] >= 0.85 and summary["neighbourhood"] >= 0.98
    assert summary["other_relation_kept"] >= 0.95 and summary["edited_subject_kept"] >= 0.6
    assert summary["unedited_efficacy"] <= 0.05
    sequential = summary["sequential"]
    assert len(sequential["per_edit_efficacy"]) == 10
    assert sequential["efficacy"] >= 0.80 and round(sequential["neighbourhood"], 4) >= 0.95  # 95 of 100 (float32 mean)
    assert sequential["edited_subject_kept"] >= 0.7  # 0.80 measured (0.775 over 20 edits)
    assert {"score", "seconds_per_edit_median", "paraphrase"} <= summary.keys() | sequential.keys()
    for report in (summary, sequential):  # top-1 locality beside the CounterFact metrics, with intervals
        for pool in ("same_relation", "other_relation"):
            low, high = report[f"{pool}_kept_interval"]
            assert 0 <= low <= report[f"{pool}_kept"] <= high <= 1 and report[f"{pool}_n"] > 0


def test_rome_stops_when_its_caller_goes_away(toy, toy_surgeon, covariance) -> None:
    _, tokenizer, world = toy
    case = edit_cases(world, 1, seed=6)[0]
    asked: list[int] = []

    def gone_after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(Cancelled, match="step 4 of 10000"):
        compute_rome(
            toy_surgeon,
            tokenizer,
            case.request,
            covariance,
            reference_corpus(),
            RomeHyperParams(steps=10_000, early_stop_nll=0.0),
            should_stop=gone_after_three,
        )
