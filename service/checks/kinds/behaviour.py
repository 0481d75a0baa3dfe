"""``behaviour``: CheckList's behavioural tests (Ribeiro et al. 2020) on the candidate, from a
template whose ``{slots}`` are filled from lists (every combination):

- ``test: mft`` (minimum functionality): each filled prompt's greedy continuation meets ``expect``
  (``starts_with`` / ``contains`` / ``not_contains``, which may use the slots too);
- ``test: inv`` (invariance): replacing ``from`` by ``to`` (``perturbations: [[from, to], …]``)
  leaves the greedy continuation unchanged;
- ``test: dir`` (directional expectation): after the same replacements, the log-likelihood of
  ``continuation`` moves ``direction: up | down`` by at least ``margin`` (default 0).

Params also: ``max_tokens`` (default 4), ``min_pass_rate`` (default 1.0, rule ``estimate``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

from service.checks.context import CheckContext
from service.checks.expect import meets, parse_expectation
from service.checks.params import MAX_ITEMS, Params
from service.checks.result import CheckResult, judge
from service.checks.stats import mean
from service.checks.suite_basics import SuiteBasics
from service.registry import InvalidArgument

KIND = "behaviour"
TESTS = ("mft", "inv", "dir")


@dataclass(frozen=True)
class Config:
    test: str
    cases: tuple[dict[str, str], ...]  # the slot values of each filled prompt
    template: str
    expect: dict[str, str]
    perturbations: tuple[tuple[str, str], ...]
    continuation: str
    direction: str
    margin: float
    max_tokens: int
    min_pass_rate: float
    rule: str


def _fill(where: str, text: str, values: dict[str, str]) -> str:
    try:
        return text.format_map(values)
    except (KeyError, ValueError, IndexError) as exc:
        raise InvalidArgument(f"{where}: {text!r:.80} does not fill from the slots ({exc})") from exc


def parse(params: Params, suite: SuiteBasics) -> Config:
    test = params.text("test", None, TESTS)
    if test is None:
        raise InvalidArgument(f"{params.where}.test must be one of {', '.join(TESTS)}")
    template = params.text("template")
    if template is None:
        raise InvalidArgument(f"{params.where}.template is required")
    raw_slots = params.value("slots") or {}
    if not isinstance(raw_slots, dict):
        raise InvalidArgument(f"{params.where}.slots must map slot names to lists of values")
    slots = {name: Params(f"{params.where}.slots", raw_slots).texts(name) for name in raw_slots}
    combinations = 1
    for values in slots.values():
        combinations *= len(values)
    if combinations > MAX_ITEMS:
        raise InvalidArgument(f"{params.where}.slots fill {combinations} prompts; at most {MAX_ITEMS}")
    cases = [dict(zip(slots, chosen, strict=True)) for chosen in itertools.product(*slots.values())]
    for case in cases[:1]:
        _fill(f"{params.where}.template", template, case)
    expect: dict[str, str] = {}
    perturbations: list[tuple[str, str]] = []
    continuation, direction, margin = "", "up", 0.0
    if test == "mft":
        raw = params.value("expect")
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{params.where}.expect must be a mapping (starts_with / contains / not_contains)")
        expect = parse_expectation(f"{params.where}.expect", raw)
        for text in expect.values():
            _fill(f"{params.where}.expect", text, cases[0])
    else:
        raw = params.value("perturbations")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_ITEMS:
            raise InvalidArgument(f"{params.where}.perturbations must be a list of [from, to] pairs")
        for i, pair in enumerate(raw):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and x for x in pair)):
                raise InvalidArgument(f"{params.where}.perturbations[{i}] must be [from, to], two non-empty strings")
            perturbations.append((pair[0], pair[1]))
        if test == "dir":
            continuation = params.text("continuation") or ""
            if not continuation:
                raise InvalidArgument(f"{params.where}.continuation is required for test: dir")
            direction = params.text("direction", "up", ("up", "down")) or "up"
            margin = float(params.number("margin", 0.0) or 0.0)
    max_tokens = params.integer("max_tokens", 4, 1, 64)
    min_pass_rate = float(params.number("min_pass_rate", 1.0, 0.0, 1.0) or 0.0)
    rule = params.rule("estimate")
    params.done()
    return Config(
        test, tuple(cases), template, expect, tuple(perturbations), continuation, direction, margin, max_tokens,
        min_pass_rate, rule,
    )  # fmt: skip


def run(context: CheckContext, name: str, config: Config) -> CheckResult:
    prompts = [config.template.format_map(case) for case in config.cases]
    outcomes: list[bool] = []
    worst: list[dict[str, Any]] = []
    if config.test == "mft":
        produced = context.complete(context.version, prompts, config.max_tokens)
        for case, prompt, text in zip(config.cases, prompts, produced, strict=True):
            expectation = {key: value.format_map(case) for key, value in config.expect.items()}
            outcomes.append(meets(text, expectation))
            if not outcomes[-1]:
                worst.append({"prompt": prompt, **expectation, "produced": text.strip()})
    else:
        pairs = [
            (prompt, prompt.replace(old, new))
            for prompt in prompts
            for old, new in config.perturbations
            if old in prompt
        ]
        if not pairs:
            raise InvalidArgument(f"{name}: no perturbation applies to any filled prompt")
        if config.test == "inv":
            outputs = context.complete(context.version, [p for pair in pairs for p in pair], config.max_tokens)
            for (original, changed), before, after in zip(pairs, outputs[::2], outputs[1::2], strict=True):
                outcomes.append(before.strip() == after.strip())
                if not outcomes[-1]:
                    worst.append(
                        {
                            "prompt": original,
                            "perturbed": changed,
                            "output": before.strip(),
                            "perturbed_output": after.strip(),
                        }
                    )
        else:
            scored = [(p, config.continuation) for pair in pairs for p in pair]
            (sums,) = context.logprob_sums([context.version], scored)
            moves = sums[1::2] - sums[::2]
            sign = 1.0 if config.direction == "up" else -1.0
            for (original, changed), move in zip(pairs, moves.tolist(), strict=True):
                outcomes.append(sign * move >= config.margin)
                if not outcomes[-1]:
                    worst.append({"prompt": original, "perturbed": changed, "logprob_change": round(move, 4)})
    estimate = mean(torch.tensor(outcomes, dtype=torch.float64), context.resamples, context.seed)
    what = f"{config.test.upper()} pass rate"
    return judge(name, KIND, estimate, config.min_pass_rate, ">=", config.rule, what, "", worst)
