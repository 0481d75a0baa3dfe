"""Top-1 locality of fact edits (issue 38): the share of the facts the unedited model answered
right that it still answers right, in two pools, with bootstrap intervals."""

from __future__ import annotations

import pytest
import torch

from editors import NeuronAblation, Surgeon
from editors.intervals import NoExamples, mean
from editors.toyworld.counterfact import LocalityJudge, answered, locality_pools


def test_the_pools_split_what_an_edit_must_keep(toy) -> None:
    _, _, world = toy
    capital = world.facts_for("capital")[0]
    edited = {(capital.subject, "capital")}
    pools = locality_pools(world.facts, edited)
    same, other = pools["same_relation"], pools["other_relation"]
    assert capital not in same + other  # the edited fact is not something to keep
    assert all(f.relation == "capital" and f.subject != capital.subject for f in same)
    others = sorted({f.relation for f in world.facts} - {"capital"})
    assert sorted({f.relation for f in other}) == others  # every other relation, the edited subject's included
    assert any(f.subject == capital.subject for f in other)
    assert sorted(f.relation for f in pools["edited_subject"]) == others
    assert {f.subject for f in pools["edited_subject"]} == {capital.subject}
    assert len(same) + len(other) == len(world.facts) - 1


def test_locality_is_one_unedited_and_falls_when_an_edit_damages_recall(toy) -> None:
    model, tokenizer, world = toy
    judge = LocalityJudge(model, tokenizer, world)
    assert judge.correct and answered(model, tokenizer, judge.correct).all()
    edited = {(world.facts_for("capital")[0].subject, "capital")}
    judge.judge(edited)
    report = judge.report()
    assert report["same_relation_kept"] == report["other_relation_kept"] == 1.0
    assert report["edited_subject_kept"] in (1.0, None)  # (None: the model never knew that language)
    mlp = model.config.n_inner or 4 * model.config.n_embd
    damaging = NeuronAblation(layer=0, neurons=tuple(range(mlp)), mode="zero")  # where the toy recalls facts
    damaged = LocalityJudge(model, tokenizer, world)
    with Surgeon(model).apply([damaging]):
        damaged.judge(edited)
    report = damaged.report()
    assert report["same_relation_kept"] < 0.9 and report["other_relation_kept"] < 0.9
    for pool in ("same_relation", "other_relation"):
        low, high = report[f"{pool}_kept_interval"]
        assert low <= report[f"{pool}_kept"] <= high and report[f"{pool}_n"] > 0


def test_an_estimate_over_nothing_is_refused() -> None:
    with pytest.raises(NoExamples):
        mean(torch.zeros(0), 100, 0)
