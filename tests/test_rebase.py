"""Rebasing a version's edits onto a successor checkpoint (issue 36): the toy successor, and each
kind of edit made again, carried or flagged, with its drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from editors import HeadAblation, InvalidEditError, LowRank, Surgeon
from editors.circuits import DiscoveryRequest, discover_circuit, propose_edit
from editors.covariance import CovarianceCache
from editors.rebase import check_successor, efficacy, rebase_edits
from editors.rome import RomeHyperParams, compute_rome
from editors.steering import derive_steering
from editors.toyworld import SUCCESSOR_MODEL_DIR, TOY_MODEL_DIR, WORLD_FILE, World, load_toy_model, reference_corpus
from editors.toyworld.counterfact import edit_cases, relation_prompts
from editors.toyworld.evaluate import fact_recall, sentiment_pairs
from editors.toyworld.locate_pairs import INDUCTION_METRIC, induction_pairs
from editors.toyworld.manifest import file_sha256, verify_manifest
from editors.toyworld.successor import LINEAGE_FILE, moved_capitals, train_successor
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def successor():
    return (*load_toy_model(SUCCESSOR_MODEL_DIR), SUCCESSOR_MODEL_DIR)


def test_the_committed_successor_names_the_committed_toy_model_and_its_recipe() -> None:
    """Its files are intact, it was trained from the toy model as committed (a retrained toy model
    with a stale successor fails here: `make toymodel` rebuilds both), and its world is the toy
    world with the recipe's capitals moved. (Retraining it from the recipe reproduces its weights
    bit for bit on this machine; that takes 30 s, so it is not repeated here.)"""
    assert verify_manifest(SUCCESSOR_MODEL_DIR) == []
    lineage = json.loads((SUCCESSOR_MODEL_DIR / LINEAGE_FILE).read_text())
    assert lineage["base_model_sha256"] == file_sha256(TOY_MODEL_DIR / "model.safetensors")
    base = World.load(TOY_MODEL_DIR / WORLD_FILE)
    assert World.load(SUCCESSOR_MODEL_DIR / WORLD_FILE) == moved_capitals(base, lineage["moved"], lineage["seed"])


def test_the_successor_learned_its_moved_capitals_and_kept_the_rest(toy, successor) -> None:
    _, _, base_world = toy
    model, tokenizer, world, _ = successor
    moved = [new for new, old in zip(world.facts, base_world.facts, strict=True) if new.object != old.object]
    assert len(moved) == 6 and {f.relation for f in moved} == {"capital"}
    assert fact_recall(model, tokenizer, moved) >= 5 / 6  # the base answers none of them
    assert fact_recall(toy[0], toy[1], moved) == 0.0
    assert fact_recall(model, tokenizer, world.facts) >= 0.95


def test_a_successor_of_another_shape_or_vocabulary_is_refused(toy, toy_surgeon) -> None:
    from transformers import AutoTokenizer

    other = Surgeon(tiny_model("gpt2"))
    with pytest.raises(InvalidEditError, match="shapes") as caught:
        check_successor(toy_surgeon, other, toy[1], toy[1])
    assert caught.value.field == "successor"
    gpt2_like = AutoTokenizer.from_pretrained(Path(toy[0].name_or_path))
    gpt2_like.add_tokens(["Atlantis"])
    with pytest.raises(InvalidEditError, match="vocabulary"):
        check_successor(toy_surgeon, toy_surgeon, toy[1], gpt2_like)


def test_a_version_is_rebased_edit_by_edit_with_its_drift(toy, toy_surgeon, induction_heads, successor) -> None:
    _, tokenizer, world = toy
    new_model, _, _, new_dir = successor
    new_surgeon = Surgeon(new_model)
    corpus = reference_corpus()
    case = edit_cases(world, 1, seed=8)[0]
    covariance = CovarianceCache().get_or_compute(toy_surgeon, tokenizer, corpus, 0)
    hparams = RomeHyperParams(keep_prompts=relation_prompts(world))
    rome = compute_rome(toy_surgeon, tokenizer, case.request, covariance, corpus, hparams, show_progress=False).edit
    steer = derive_steering(toy_surgeon, tokenizer, sentiment_pairs(world)[:16], layer=1)
    request = DiscoveryRequest(tuple(induction_pairs(world, 32, seed=3)), INDUCTION_METRIC, kinds=("heads",))
    cut = propose_edit(toy_surgeon, tokenizer, discover_circuit(toy_surgeon, tokenizer, request))
    zero, mean = HeadAblation(layer=2, heads=(1,)), cut[0]
    delta = LowRank(site="blocks.3.mlp.W_out", U=torch.randn(128, 1) * 1e-3, V=torch.randn(512, 1))
    edits = [rome, steer, *cut, zero, delta]

    successor_covariances = CovarianceCache()
    rebased = rebase_edits(
        toy_surgeon,
        new_surgeon,
        tokenizer,
        edits,
        reference_corpus(new_dir),
        lambda layer: successor_covariances.get_or_compute(new_surgeon, tokenizer, reference_corpus(new_dir), layer),
    )
    by_kind = {d.originals: d for d in rebased.drift}
    fact, steering, located = by_kind[(0,)], by_kind[(1,)], by_kind[tuple(range(2, 2 + len(cut)))]
    assert fact.action == "recomputed" and fact.metrics["efficacy_before"] == fact.metrics["efficacy_after"] == 1.0
    assert 0 <= fact.metrics["efficacy_carried"] <= 1
    assert steering.action == "recomputed" and 0.5 < steering.metrics["steering_cosine"] < 1 - 1e-4  # moved, held
    assert located.action == "recomputed" and 0 < located.metrics["circuit_jaccard"] <= 1
    assert by_kind[(2 + len(cut),)].action == "carried" and by_kind[(3 + len(cut),)].action == "flagged"
    assert isinstance(mean, HeadAblation) and mean.mode == "mean"  # a located cut carries mean values
    assert rebased.summary()["fact_edits_held"] == 1 and rebased.summary()["recomputed"] == 3

    # the successor's edits are new where they were made again, the same where carried
    new_rome = rebased.edits[0]
    assert new_rome.provenance["request"] == rome.provenance["request"] and not torch.equal(new_rome.U, rome.U)
    assert rebased.edits[-2:] == [zero, delta]
    new_surgeon.validate(rebased.edits)
    assert efficacy(new_surgeon, tokenizer, rebased.edits, [case.request]) == 1.0
    strongest = "L{}.H{}".format(*induction_heads[0])
    new_cut = rebased.edits[2 : 2 + located.made]
    assert any(strongest in e.provenance["cut"]["nodes"] for e in new_cut)

    # the control: rebased onto the base itself, a steering vector does not move
    same = rebase_edits(toy_surgeon, toy_surgeon, tokenizer, [steer], corpus, lambda layer: covariance)
    assert same.drift[0].metrics["steering_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert same.as_dict()["summary"]["steering_cosine_min"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("moved", [1, 61])
def test_a_successor_that_moves_no_capital_or_more_than_there_are_is_refused(toy, tmp_path, moved) -> None:
    with pytest.raises(InvalidEditError, match="moved"):
        train_successor(tmp_path / "successor", moved=moved)
    assert not (tmp_path / "successor").exists()  # refused before any work
