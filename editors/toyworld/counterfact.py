"""CounterFact-style evaluation of fact edits on the toy world (Meng et al. 2022, §3).

For a request rewriting ``subject``'s ``relation`` from ``old`` to ``new``:

- **efficacy**: P(new) > P(old) on the edit prompt;
- **paraphrase**: the same on the subject's held-out phrasings (never trained for it);
- **neighbourhood**: on other subjects with the same relation, P(their true object) > P(new);
- **score**: harmonic mean of the three; and the *magnitude* versions (mean probability
  differences: P(new) − P(old), and P(true) − P(new) for neighbours).

The neighbourhood score only asks whether a neighbour's true object still beats *this* edit's new
object: a neighbour whose answer moved to some third object counts as kept. So every evaluation
also reports **top-1 locality** (:func:`locality`): of the facts the unedited model answers
correctly (top-1 at the canonical prompt), the share it still answers correctly under the edits,
for the edited relation's other subjects (``same_relation_kept``) and for every other relation of
every subject, the edited subjects included (``other_relation_kept``), and, of those, the edited
subjects' own other facts (``edited_subject_kept``: editing a capital must not change a language),
each with its 95% bootstrap interval (:mod:`editors.intervals`).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editors.intervals import mean
from editors.rome import RomeRequest
from editors.toyworld.evaluate import next_token_logits
from editors.toyworld.world import TEMPLATES, Fact, World

#: Resamples of the locality intervals (as the checks' default).
RESAMPLES = 1000

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


def relation_prompts(world: World) -> tuple[str, ...]:
    """Every relation's canonical prompt ("{}" for the subject), as ``keep_prompts``: an edit keeps
    its subject's answers to all of them but its own (a request's own prompt is never kept)."""
    relations = sorted({fact.relation for fact in world.facts}, key=list(TEMPLATES).index)
    return tuple(TEMPLATES[relation][0].replace("{s}", "{}") for relation in relations)


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
    """The case's metrics on ``model`` as it runs now (call it under the edit stack to judge):
    CounterFact's (``efficacy``, ``paraphrase``: P(new) > P(old)) and the stricter top-1 ones
    (``efficacy_top1``, ``paraphrase_top1``: the new object is the model's answer)."""
    new, old = case.request.target, case.old
    edit_and_paraphrases = [case.request.text, *case.paraphrases]
    probs = next_token_logits(model, tokenizer, edit_and_paraphrases).softmax(dim=-1)
    p = probs[:, tokenizer.convert_tokens_to_ids([new, old])]
    top1 = (probs.argmax(dim=-1) == tokenizer.convert_tokens_to_ids(new)).float()
    wins = (p[:, 0] > p[:, 1]).float()
    margins = p[:, 0] - p[:, 1]
    n = _probabilities(model, tokenizer, [q for q, _ in case.neighbours], [(true, new) for _, true in case.neighbours])
    return {
        "efficacy": wins[0].item(),
        "paraphrase": wins[1:].mean().item(),
        "efficacy_top1": top1[0].item(),
        "paraphrase_top1": top1[1:].mean().item(),
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


def answered(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Fact]) -> torch.Tensor:
    """``[len(facts)]`` bool: whether the model's top-1 next token at each fact's canonical prompt
    is its object (run it under an edit stack to judge the stack)."""
    top = next_token_logits(model, tokenizer, [fact.canonical_prompt for fact in facts]).argmax(dim=-1)
    return top == torch.tensor(tokenizer.convert_tokens_to_ids([fact.object for fact in facts]))


def locality_pools(facts: Sequence[Fact], edited: set[tuple[str, str]]) -> dict[str, list[Fact]]:
    """The facts an edit of ``edited`` (subject, relation) pairs must keep: the edited relations'
    facts of subjects left alone (``same_relation``), every other fact (``other_relation``: the other
    relations, and the edited subjects' other relations), and the latter alone (``edited_subject``)."""
    subjects, relations = {s for s, _ in edited}, {r for _, r in edited}
    kept = [fact for fact in facts if (fact.subject, fact.relation) not in edited]
    other = [fact for fact in kept if fact.subject in subjects or fact.relation not in relations]
    return {
        "same_relation": [f for f in kept if f not in other],
        "other_relation": other,
        "edited_subject": [f for f in other if f.subject in subjects],
    }


def locality(outcomes: dict[str, list[torch.Tensor]], seed: int = 0) -> dict[str, object]:
    """``{pool}_kept`` (share still answered right, pooled over every edit judged), its 95%
    interval ``{pool}_kept_interval`` and ``{pool}_n``, from each pool's per-fact outcomes
    (see :func:`answered`) of the facts the unedited model answered right."""
    report: dict[str, object] = {}
    for pool, parts in outcomes.items():
        values = torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)
        if not len(values):  # nothing of that kind to keep (every fact of it was edited)
            report.update({f"{pool}_kept": None, f"{pool}_kept_interval": None, f"{pool}_n": 0})
            continue
        estimate = mean(values, RESAMPLES, seed)
        report[f"{pool}_kept"] = round(estimate.value, 4)
        report[f"{pool}_kept_interval"] = [round(estimate.low, 4), round(estimate.high, 4)]
        report[f"{pool}_n"] = estimate.n
    return report


def edited_facts(cases: Sequence[EditCase]) -> set[tuple[str, str]]:
    """The (subject, relation) pairs ``cases`` rewrite."""
    return {(case.request.subject, case.relation) for case in cases}


class LocalityJudge:
    """Top-1 locality of edits on ``world``: the facts the unedited model answers right are found
    once; :meth:`judge` (under an edit stack) records which of them each pool still has."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world: World) -> None:
        self.model, self.tokenizer = model, tokenizer
        right = answered(model, tokenizer, world.facts)
        self.correct = [fact for fact, ok in zip(world.facts, right.tolist(), strict=True) if ok]
        self.outcomes: dict[str, list[torch.Tensor]] = {"same_relation": [], "other_relation": [], "edited_subject": []}

    def judge(self, edited: set[tuple[str, str]]) -> None:
        """Record the current model's answers on the facts ``edited`` must keep."""
        for pool, facts in locality_pools(self.correct, edited).items():
            if facts:
                self.outcomes[pool].append(answered(self.model, self.tokenizer, facts))

    def report(self, seed: int = 0) -> dict[str, object]:
        return locality(self.outcomes, seed)
