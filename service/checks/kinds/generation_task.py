"""``generation_task``: greedy continuations must (not) start with / contain given strings.

Params: ``items`` (``[{prompt, starts_with | contains | not_contains}]``) or ``shipped: NAME`` (the
model's ``task_NAME.jsonl``); ``max_tokens`` (default 8); either ``min_pass_rate`` (default 1.0,
rule ``estimate``) or ``max_drop`` of the pass rate against ``against`` (paired, rule ``lenient``:
fail when the drop is significantly larger); ``skip_edited_subjects`` (default false).

Items about a subject the version's fact edits (ROME, MEMIT) rewrite: an item asking an edited fact
(its prompt or a phrasing of its relation, from the suite's ``relations``) expects the edit's new
target under ``min_pass_rate`` (a ``max_drop`` comparison leaves it out: the reference cannot know
it); an item asking another relation of that subject is judged as written (a capital edit must
keep the language); an item no relation places is left out. ``skip_edited_subjects: true`` leaves
out every item about an edited subject instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from service.checks.context import CheckContext
from service.checks.edit_facts import edit_aware_items, without_subjects
from service.checks.expect import meets, prompted_items
from service.checks.params import Params
from service.checks.result import CheckResult, judge
from service.checks.stats import mean
from service.checks.suite_basics import SuiteBasics
from service.registry import InvalidArgument

KIND = "generation_task"


@dataclass(frozen=True)
class Config:
    items: tuple[dict[str, Any], ...]
    source: str
    max_tokens: int
    min_pass_rate: float | None
    max_drop: float | None
    against: str
    rule: str
    skip_edited_subjects: bool
    relations: tuple[tuple[str, ...], ...]


def parse(params: Params, suite: SuiteBasics) -> Config:
    items, source = prompted_items(params, suite.model_dir)
    max_tokens = params.integer("max_tokens", 8, 1, 64)
    min_pass_rate = params.number("min_pass_rate", None, 0.0, 1.0)
    max_drop = params.number("max_drop", None, 0.0, 1.0)
    if min_pass_rate is not None and max_drop is not None:
        raise InvalidArgument(f"{params.where}: give min_pass_rate or max_drop, not both (list the check twice)")
    if min_pass_rate is None and max_drop is None:
        min_pass_rate = 1.0
    against = params.text("against", suite.reference) or suite.reference
    rule = params.rule("estimate" if max_drop is None else "lenient")
    skip = params.flag("skip_edited_subjects", False)
    params.done()
    return Config(tuple(items), source, max_tokens, min_pass_rate, max_drop, against, rule, skip, suite.relations)


def judged_items(context: CheckContext, config: Config) -> list[dict[str, Any]]:
    """The items as the version's fact edits mean them to be answered (see the module docstring)."""
    if config.skip_edited_subjects:
        return without_subjects(config.items, context.targeted_subjects())
    return edit_aware_items(
        context.edits,
        config.items,
        config.relations,
        config.max_drop is None,
        lambda item, answer: {"prompt": item["prompt"], "starts_with": answer},
    )


def run(context: CheckContext, name: str, config: Config) -> CheckResult:
    items = judged_items(context, config)
    prompts = [item["prompt"] for item in items]
    produced = context.complete(context.version, prompts, config.max_tokens)
    passed = torch.tensor([meets(text, item) for text, item in zip(produced, items, strict=True)], dtype=torch.float64)
    if config.max_drop is None:
        estimate = mean(passed, context.resamples, context.seed)
        worst = [
            {**item, "produced": text.strip()} for item, text, ok in zip(items, produced, passed, strict=True) if not ok
        ]
        what = f"pass rate ({config.source})"
        return judge(name, KIND, estimate, float(config.min_pass_rate), ">=", config.rule, what, "", worst)
    reference, said = context.reference(config.against)
    before = context.complete(reference, prompts, config.max_tokens)
    passed_before = torch.tensor([meets(t, item) for t, item in zip(before, items, strict=True)], dtype=torch.float64)
    estimate = mean(passed_before - passed, context.resamples, context.seed)
    worst = [
        {**item, "reference": old.strip(), "candidate": new.strip()}
        for item, old, new, ok_before, ok in zip(items, before, produced, passed_before, passed, strict=True)
        if ok_before and not ok
    ]
    what = f"pass-rate drop ({config.source})"
    return judge(name, KIND, estimate, float(config.max_drop), "<=", config.rule, what, said, worst)
