"""CounterFact-style evaluation of fact edits on the toy world (Meng et al. 2022, §3).

For a request rewriting ``subject``'s ``relation`` from ``old`` to ``new``:

- **efficacy**: P(new) > P(old) on the edit prompt;
- **paraphrase**: the same on the subject's held-out phrasings (never trained for it);
- **neighbourhood**: on other subjects with the same relation, P(their true object) > P(new);
- **score**: harmonic mean of the three; and the *magnitude* versions (mean probability
  differences: P(new) − P(old), and P(true) − P(new) for neighbours).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editors.rome import RomeRequest
from editors.toyworld.evaluate import next_token_logits
from editors.toyworld.world import TEMPLATES, World

METRICS = ("efficacy", "paraphrase", "neighbourhood")


@dataclass(frozen=True)
class EditCase:
    """A counterfactual request and the prompts that judge it."""

    request: RomeRequest
    relation: str
    old: str
    paraphrases: tuple[str, ...]
    neighbours: tuple[tuple[str, str], ...]  # (prompt, that subject's true object)


def edit_cases(world: World, n: int, seed: int = 0, n_neighbours: int = 10) -> list[EditCase]:
    """``n`` random counterfactual requests on distinct subjects (canonical prompt, another object).

    Neighbours are never subjects of another case in the batch, so the cases can be applied
    together (sequential editing) without one edit's change counting against another's
    neighbourhood.
    """
    rng = random.Random(seed)
    chosen, subjects = [], set()
    for fact in rng.sample(world.facts, len(world.facts)):
        if len(chosen) < n and fact.subject not in subjects:
            chosen.append(fact)
            subjects.add(fact.subject)
    cases: list[EditCase] = []
    for fact in chosen:
        new = rng.choice([o for o in world.objects(fact.relation) if o != fact.object])
        others = [f for f in world.facts_for(fact.relation) if f.subject not in subjects and f.object != new]
        # prefer neighbours sharing the old object (CounterFact's neighbourhood), then any
        others.sort(key=lambda f: (f.object != fact.object, rng.random()))
        neighbours = tuple((f.canonical_prompt, f.object) for f in others[:n_neighbours])
        request = RomeRequest(TEMPLATES[fact.relation][0].replace("{s}", "{}"), fact.subject, new)
        cases.append(
            EditCase(request, fact.relation, fact.object, tuple(fact.prompts(fact.heldout_templates)), neighbours)
        )
    return cases


def batch_cases(
    world: World, n: int, seed: int = 0, relation: str = "capital", n_neighbours: int = 10
) -> list[EditCase]:
    """``n`` facts of one ``relation`` changed together (all of them at ``n`` = its fact count: every
    country's capital). A case's neighbours are facts the batch leaves alone: the relation's other
    subjects first, then the edited subjects' other relations (what is left when every subject
    of the relation is edited), so MEMIT's neighbourhood has prompts at every batch size."""
    rng = random.Random(seed)
    facts = world.facts_for(relation)
    if not 0 < n <= len(facts):
        raise ValueError(f"n must be 1..{len(facts)} (the {relation} facts), got {n}")
    chosen = rng.sample(facts, n)
    edited = {(f.subject, f.relation) for f in chosen}
    untouched = [f for f in world.facts if (f.subject, f.relation) not in edited]
    cases: list[EditCase] = []
    for fact in chosen:
        new = rng.choice([o for o in world.objects(relation) if o != fact.object])
        pool = [f for f in untouched if f.object != new]
        pool.sort(key=lambda f: (f.relation != relation, f.object != fact.object, rng.random()))
        neighbours = tuple((f.canonical_prompt, f.object) for f in pool[:n_neighbours])
        request = RomeRequest(TEMPLATES[relation][0].replace("{s}", "{}"), fact.subject, new)
        cases.append(EditCase(request, relation, fact.object, tuple(fact.prompts(fact.heldout_templates)), neighbours))
    return cases


def _probabilities(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], words: Sequence[Sequence[str]]
) -> torch.Tensor:
    """``[len(prompts), k]``: next-token probability of each prompt's words."""
    probs = next_token_logits(model, tokenizer, prompts).softmax(dim=-1)
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(list(w)) for w in words])
    return probs.gather(1, ids)


def judge(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, case: EditCase) -> dict[str, float]:
    """The case's metrics on ``model`` as it runs now (call it under the edit stack to judge)."""
    new, old = case.request.target, case.old
    edit_and_paraphrases = [case.request.text, *case.paraphrases]
    p = _probabilities(model, tokenizer, edit_and_paraphrases, [(new, old)] * len(edit_and_paraphrases))
    wins = (p[:, 0] > p[:, 1]).float()
    margins = p[:, 0] - p[:, 1]
    n = _probabilities(model, tokenizer, [q for q, _ in case.neighbours], [(true, new) for _, true in case.neighbours])
    return {
        "efficacy": wins[0].item(),
        "paraphrase": wins[1:].mean().item(),
        "neighbourhood": (n[:, 0] > n[:, 1]).float().mean().item(),
        "efficacy_magnitude": margins[0].item(),
        "paraphrase_magnitude": margins[1:].mean().item(),
        "neighbourhood_magnitude": (n[:, 0] - n[:, 1]).mean().item(),
    }


def harmonic_score(metrics: dict[str, float]) -> float:
    values = [metrics[m] for m in METRICS]
    return 0.0 if min(values) <= 0 else statistics.harmonic_mean(values)


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    means = {key: statistics.fmean(row[key] for row in rows) for key in rows[0]}
    means["score"] = harmonic_score(means)
    return means
