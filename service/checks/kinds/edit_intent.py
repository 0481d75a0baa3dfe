"""``edit_intent``: the version's own edits do what they claim.

- A fact edit (ROME/MEMIT) produces its target on its prompt (efficacy) and on the other templates
  of its relation in the suite's ``relations`` (generalisation);
- portability, where the suite gives follow-on facts (``portability: [{subject, prompt,
  starts_with | contains | not_contains}]``): for a fact edit of that subject, a prompt whose
  answer follows from the new fact;
- an edit's stated intent (``provenance.intent``: ``[{prompt, must | must_not}]``, e.g. what an
  ablation must remove and what it must keep) holds;
- a steering edit moves its declared property: on its derivation pairs, or on the held-out
  ``steering_pairs`` given here, log P(positive) − log P(negative) moves (against the base) in
  the direction of its scale by at least ``steering_margin`` (default 0) per pair;
- a located cut (an edit ``propose`` made from a discovered circuit, heads or SAE features, with a
  ``logit_diff`` or ``answer_logprob`` metric) removes, on the discovery's held-out pairs, at
  least ``LOCATED_SHARE`` of the share of the behaviour it claimed on the discovery pairs: the
  behaviour is each pair's metric on the clean prompt less the corrupted one, under the base.

Params: ``include`` (which of ``efficacy``, ``generalisation``, ``portability``, ``stated``,
``steering``, ``located`` to count;
default all: list the kind twice to hold generalisation to a lower bar), ``steering_pairs``,
``steering_margin``, ``max_tokens`` (default 4), ``min_pass_rate`` (default 1.0, rule
``estimate``). A version whose edits claim nothing of what is included has nothing to check (not
applicable). A MEMIT batch counts each of its requests as a fact edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from service.checks.context import CheckContext
from service.checks.edit_facts import fact_edits, relation_of
from service.checks.expect import EXPECTATIONS, meets, parse_expectation
from service.checks.params import Params, item_text
from service.checks.result import CheckResult, judge, nothing_to_check
from service.checks.stats import mean
from service.checks.suite_basics import SuiteBasics
from service.registry import InvalidArgument

KIND = "edit_intent"
#: The locate metrics a located cut's claim is checked under (one-token answers).
METRICS = ("logit_diff", "answer_logprob")


CASES = ("efficacy", "generalisation", "portability", "stated", "steering", "located")
#: The share of its claimed removal a located cut must reach on held-out pairs (generalising from
#: the discovery pairs to new ones loses some: half is the floor).
LOCATED_SHARE = 0.5


@dataclass(frozen=True)
class Config:
    include: frozenset[str]
    relations: tuple[tuple[str, ...], ...]
    portability: tuple[tuple[str, str, dict[str, str]], ...]  # (subject, prompt, expectation)
    steering_pairs: tuple[tuple[str, str], ...]
    steering_margin: float
    max_tokens: int
    min_pass_rate: float
    rule: str


def parse(params: Params, suite: SuiteBasics) -> Config:
    raw = params.value("steering_pairs") or []
    if not isinstance(raw, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) and x.strip() for x in p) for p in raw
    ):
        raise InvalidArgument(f"{params.where}.steering_pairs must be a list of [positive, negative] texts")
    include = params.value("include") or list(CASES)
    if not isinstance(include, list) or not include or not set(include) <= set(CASES):
        raise InvalidArgument(f"{params.where}.include must list some of {', '.join(CASES)}")
    portability = []
    for i, item in enumerate(params.value("portability") or []):
        where = f"{params.where}.portability[{i}]"
        if not isinstance(item, dict) or set(item) - {"subject", "prompt", *EXPECTATIONS}:
            raise InvalidArgument(f"{where} must be {{subject, prompt, starts_with | contains | not_contains}}")
        expectation = parse_expectation(where, item)
        portability.append((item_text(where, item, "subject"), item_text(where, item, "prompt"), expectation))
    config = Config(
        frozenset(include),
        suite.relations,
        tuple(portability),
        tuple((p[0], p[1]) for p in raw),
        float(params.number("steering_margin", 0.0) or 0.0),
        params.integer("max_tokens", 4, 1, 64),
        float(params.number("min_pass_rate", 1.0, 0.0, 1.0) or 0.0),
        params.rule("estimate"),
    )
    params.done()
    return config


def split_pair(positive: str, negative: str) -> tuple[str, str, str] | None:
    """(shared prompt, positive ending, negative ending) at the first differing word; None when
    the texts share no leading words (nothing to condition on)."""
    a, b = positive.split(), negative.split()
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    if shared == 0 or shared == len(a) or shared == len(b):
        return None
    return " ".join(a[:shared]), " ".join(a[shared:]), " ".join(b[shared:])


def run(context: CheckContext, name: str, config: Config) -> CheckResult:
    cases: list[tuple[str, str, dict[str, str]]] = []  # (label, prompt, expectation)
    for fact in fact_edits(context.edits):
        for template in relation_of(fact.template, config.relations):
            label = "efficacy" if template == fact.template else "generalisation"
            cases.append((label, template.format(fact.subject), {"starts_with": fact.target}))
        for subject, prompt, expectation in config.portability:
            if subject == fact.subject:
                cases.append(("portability", prompt, expectation))
    for edit in context.edits:
        for case in (getattr(edit, "provenance", None) or {}).get("intent", ()):
            expectation = {"starts_with": case["must"]} if "must" in case else {"not_contains": case["must_not"]}
            cases.append(("stated", case["prompt"], expectation))
    cases = [case for case in cases if case[0] in config.include]
    outcomes: list[bool] = []
    worst: list[dict[str, Any]] = []
    if cases:
        produced = context.complete(context.version, [prompt for _, prompt, _ in cases], config.max_tokens)
        for (label, prompt, expectation), text in zip(cases, produced, strict=True):
            outcomes.append(meets(text, expectation))
            if not outcomes[-1]:
                worst.append({"case": label, "prompt": prompt, **expectation, "produced": text.strip()})
    steering = _steering_cases(context, config) if "steering" in config.include else []
    if steering:
        pairs = [(prompt, ending) for prompt, good, bad, _ in steering for ending in (good, bad)]
        candidate, base = context.logprob_sums([context.version, 0], pairs)
        shift = (candidate[::2] - candidate[1::2]) - (base[::2] - base[1::2])
        for (prompt, good, bad, sign), moved in zip(steering, shift.tolist(), strict=True):
            outcomes.append(sign * moved >= config.steering_margin)
            if not outcomes[-1]:
                worst.append(
                    {"case": "steering", "prompt": prompt, "toward": good, "away_from": bad, "shift": round(moved, 4)}
                )
    for kind, claimed, share in _located_shares(context) if "located" in config.include else []:
        outcomes.append(share >= LOCATED_SHARE * claimed)
        if not outcomes[-1]:
            worst.append({"case": "located", "edit": kind, "claimed_share": claimed, "held_out_share": round(share, 4)})
    if not outcomes:
        return nothing_to_check(
            name,
            KIND,
            "the version's edits claim nothing to check (no fact edit, stated intent, steering or located cut)",
        )
    estimate = mean(torch.tensor(outcomes, dtype=torch.float64), context.resamples, context.seed)
    return judge(name, KIND, estimate, config.min_pass_rate, ">=", config.rule, "intent pass rate", "base", worst)


def _pair_scores(values: torch.Tensor, pairs: int, answers: int) -> torch.Tensor:
    """``[pairs, 2]``: each pair's metric on its clean and its corrupted prompt, from the log-probs
    of its answer (and wrong answer: their difference) after each."""
    grouped = values.reshape(pairs, 2, answers)
    return grouped[..., 0] - grouped[..., 1] if answers == 2 else grouped[..., 0]


def _located_shares(context: CheckContext) -> list[tuple[str, float, float]]:
    """(edit kind, claimed share removed, held-out share removed) for each located cut whose
    metric compares one-token answers (logit_diff: a log-probability difference is the logit
    difference; answer_logprob)."""
    found = []
    for edit in context.edits:
        provenance = getattr(edit, "provenance", None) or {}
        discovery, cut = provenance.get("discovery") or {}, provenance.get("cut") or {}
        metric = (discovery.get("metric") or {}).get("kind")
        if provenance.get("method") != "locate" or "removed_share" not in cut or metric not in METRICS:
            continue
        every = int(discovery.get("held_out") or 4)
        held = [p for i, p in enumerate(discovery.get("pairs") or []) if i % every == every - 1]
        answers = ("answer", "wrong") if metric == "logit_diff" else ("answer",)
        rows = [(p[side], " " + p[a].strip()) for p in held for side in ("clean", "corrupted") for a in answers]
        if not rows:
            continue
        candidate, base = (
            _pair_scores(v, len(held), len(answers)) for v in context.logprob_sums([context.version, 0], rows)
        )
        behaviour = float((base[:, 0] - base[:, 1]).sum())
        removed = float((base[:, 0] - candidate[:, 0]).sum())
        if abs(behaviour) > 1e-9:
            found.append((edit.kind, float(cut["removed_share"]), removed / behaviour))
    return found


def _steering_cases(context: CheckContext, config: Config) -> list[tuple[str, str, str, float]]:
    """(prompt, toward, away from, +1/−1) for each steering edit's pairs."""
    found = []
    for edit in context.edits:
        provenance = getattr(edit, "provenance", None) or {}
        if edit.kind != "steering" or not (config.steering_pairs or provenance.get("pairs")):
            continue
        sign = 1.0 if edit.scale >= 0 else -1.0
        for positive, negative in config.steering_pairs or [tuple(p) for p in provenance["pairs"]]:
            split = split_pair(positive, negative)
            if split is not None:
                found.append((*split, sign))
    return found
