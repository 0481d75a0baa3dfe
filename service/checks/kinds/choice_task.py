"""``choice_task``: multiple-choice accuracy by summed continuation log-likelihood, in
lm-evaluation-harness's spirit (its ``acc``): the predicted choice is the one the model finds most
likely after the prompt.

Params: ``items`` (``[{prompt, choices: [...], answer: index}]``, e.g. read from a JSONL task file
by the CLI); either ``min_accuracy`` (rule ``estimate``) or ``max_drop`` of accuracy against
``against`` (paired on the same items, rule ``lenient``: fail when the drop is significantly
larger than ``max_drop``); ``skip_edited_subjects`` (default false).

Items about a subject the version's fact edits rewrite are judged as ``generation_task`` judges
them: an item asking an edited fact counts the edit's new target as the right choice (left out
when the target is not among its choices, or under ``max_drop``); an item asking another relation
of that subject keeps its answer; an item no relation places is left out.
``skip_edited_subjects: true`` leaves out every item about an edited subject instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from service.checks.context import CheckContext
from service.checks.edit_facts import edit_aware_items, without_subjects
from service.checks.params import Params, item_text
from service.checks.result import CheckResult, judge
from service.checks.stats import mean
from service.checks.suite_basics import SuiteBasics
from service.registry import InvalidArgument

KIND = "choice_task"
MAX_CHOICES = 16


@dataclass(frozen=True)
class Config:
    items: tuple[dict[str, Any], ...]
    min_accuracy: float | None
    max_drop: float | None
    against: str
    rule: str
    skip_edited_subjects: bool
    relations: tuple[tuple[str, ...], ...]


def parse(params: Params, suite: SuiteBasics) -> Config:
    items = []
    for i, item in enumerate(params.items()):
        where = f"{params.where}.items[{i}]"
        unknown = sorted(set(item) - {"prompt", "choices", "answer"})
        if unknown:
            raise InvalidArgument(f"{where}: unknown fields {unknown}")
        choices = item.get("choices")
        if not isinstance(choices, list) or not 2 <= len(choices) <= MAX_CHOICES:
            raise InvalidArgument(f"{where}.choices must be a list of 2..{MAX_CHOICES} strings")
        for j in range(len(choices)):
            item_text(f"{where}.choices", {str(j): choices[j]}, str(j))
        answer = item.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise InvalidArgument(f"{where}.answer must be the index of the right choice (0..{len(choices) - 1})")
        items.append({"prompt": item_text(where, item, "prompt"), "choices": list(choices), "answer": answer})
    min_accuracy = params.number("min_accuracy", None, 0.0, 1.0)
    max_drop = params.number("max_drop", None, 0.0, 1.0)
    if (min_accuracy is None) == (max_drop is None):
        raise InvalidArgument(f"{params.where}: give exactly one of min_accuracy and max_drop")
    against = params.text("against", suite.reference) or suite.reference
    rule = params.rule("estimate" if max_drop is None else "lenient")
    skip = params.flag("skip_edited_subjects", False)
    params.done()
    return Config(tuple(items), min_accuracy, max_drop, against, rule, skip, suite.relations)


def _choosing(item: dict[str, Any], answer: str) -> dict[str, Any] | None:
    """``item`` with the edit's target as its right choice (``None`` if it is not among them)."""
    choices = [choice.strip() for choice in item["choices"]]
    return {**item, "answer": choices.index(answer.strip())} if answer.strip() in choices else None


def judged_items(context: CheckContext, config: Config) -> list[dict[str, Any]]:
    """The items as the version's fact edits mean them to be answered (see the module docstring)."""
    if config.skip_edited_subjects:
        return without_subjects(config.items, context.targeted_subjects())
    return edit_aware_items(context.edits, config.items, config.relations, config.max_drop is None, _choosing)


def _picks(sums: torch.Tensor, items: list[dict[str, Any]]) -> list[int]:
    picks, start = [], 0
    for item in items:
        count = len(item["choices"])
        picks.append(int(sums[start : start + count].argmax()))
        start += count
    return picks


def run(context: CheckContext, name: str, config: Config) -> CheckResult:
    items = judged_items(context, config)
    pairs = [(item["prompt"], choice) for item in items for choice in item["choices"]]
    if config.max_drop is None:
        (candidate,) = context.logprob_sums([context.version], pairs)
        picks = _picks(candidate, items)
        correct = torch.tensor([p == item["answer"] for p, item in zip(picks, items, strict=True)], dtype=torch.float64)
        estimate = mean(correct, context.resamples, context.seed)
        worst = [
            {
                "prompt": item["prompt"],
                "answer": item["choices"][item["answer"]],
                "chosen": item["choices"][p],
                **({"edited_fact": True} if item.get("edited_fact") else {}),
            }
            for item, p in zip(items, picks, strict=True)
            if p != item["answer"]
        ]
        return judge(name, KIND, estimate, float(config.min_accuracy), ">=", config.rule, "accuracy", "", worst)
    reference, said = context.reference(config.against)
    candidate, before = context.logprob_sums([context.version, reference], pairs)
    picks, picks_before = _picks(candidate, items), _picks(before, items)
    right = torch.tensor([p == item["answer"] for p, item in zip(picks, items, strict=True)], dtype=torch.float64)
    right_before = torch.tensor(
        [p == item["answer"] for p, item in zip(picks_before, items, strict=True)], dtype=torch.float64
    )
    estimate = mean(right_before - right, context.resamples, context.seed)
    worst = [
        {
            "prompt": item["prompt"],
            "answer": item["choices"][item["answer"]],
            "reference": item["choices"][old],
            "candidate": item["choices"][new],
        }
        for item, old, new in zip(items, picks_before, picks, strict=True)
        if old == item["answer"] != new
    ]
    return judge(name, KIND, estimate, float(config.max_drop), "<=", config.rule, "accuracy drop", said, worst)
