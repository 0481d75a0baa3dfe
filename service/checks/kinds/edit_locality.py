"""``edit_locality``: a fact edit changes its fact and nothing near it. Generated from each fact
edit's own request: the same relation for other subjects (the suite's ``subjects``) and the
other relations of the same subject (the suite's ``relations``) that no edit of the version
rewrites (always included: editing a capital must not change a language), each prompt's greedy
continuation compared with the reference version's on the same prompt.

Params: ``against`` (default the suite's ``reference``), ``max_neighbours`` per edit (default 40,
drawn with the suite's seed), ``max_tokens`` (default 2), ``min_unchanged`` (default 0.95, rule
``estimate``). A version without fact edits has nothing to check (not applicable). A MEMIT batch
counts each of its requests as a fact edit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from service.checks.context import CheckContext
from service.checks.edit_facts import fact_edits, relation_of
from service.checks.params import Params
from service.checks.result import CheckResult, judge, nothing_to_check
from service.checks.stats import mean
from service.checks.suite_basics import SuiteBasics

KIND = "edit_locality"


@dataclass(frozen=True)
class Config:
    relations: tuple[tuple[str, ...], ...]
    subjects: tuple[str, ...]
    against: str
    max_neighbours: int
    max_tokens: int
    min_unchanged: float
    rule: str


def parse(params: Params, suite: SuiteBasics) -> Config:
    config = Config(
        suite.relations,
        suite.subjects,
        params.text("against", suite.reference) or suite.reference,
        params.integer("max_neighbours", 40, 1, 1000),
        params.integer("max_tokens", 2, 1, 64),
        float(params.number("min_unchanged", 0.95, 0.0, 1.0) or 0.0),
        params.rule("estimate"),
    )
    params.done()
    return config


def neighbours(context: CheckContext, config: Config) -> list[tuple[str, str]]:
    """(kind of neighbour, prompt) for every fact edit: same relation, other subjects; same
    subject, other relations. Subjects another edit of the version rewrites are left out."""
    facts = fact_edits(context.edits)
    edited = {fact.subject for fact in facts}
    rewritten = {(fact.subject, relation_of(fact.template, config.relations)) for fact in facts}
    rng = random.Random(context.seed)
    found: list[tuple[str, str]] = []
    for fact in facts:
        others = [s for s in config.subjects if s not in edited]
        own = [
            ("same subject", g[0].format(fact.subject)) for g in config.relations if (fact.subject, g) not in rewritten
        ]
        own = own[: config.max_neighbours]  # the edited subject's other facts always count
        near = [("same relation", fact.template.format(s)) for s in others]
        found += own + rng.sample(near, min(len(near), config.max_neighbours - len(own)))
    return found


def run(context: CheckContext, name: str, config: Config) -> CheckResult:
    cases = neighbours(context, config)
    if not cases:
        return nothing_to_check(
            name, KIND, "no fact edit with neighbours to check (fact edits need the suite's subjects or relations)"
        )
    reference, said = context.reference(config.against)
    prompts = [prompt for _, prompt in cases]
    after = context.complete(context.version, prompts, config.max_tokens)
    before = context.complete(reference, prompts, config.max_tokens)
    unchanged = [a.strip() == b.strip() for a, b in zip(after, before, strict=True)]
    worst: list[dict[str, Any]] = [
        {"neighbour": kind, "prompt": prompt, "reference": b.strip(), "candidate": a.strip()}
        for (kind, prompt), a, b, same in zip(cases, after, before, unchanged, strict=True)
        if not same
    ]
    estimate = mean(torch.tensor(unchanged, dtype=torch.float64), context.resamples, context.seed)
    return judge(name, KIND, estimate, config.min_unchanged, ">=", config.rule, "unchanged share", said, worst)
