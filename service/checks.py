"""Regression checks for side effects: does a candidate version do what it claims, and what else
did it change?

A suite (JSON, stored per model in the registry) holds reference texts and thresholds:

- ``kl_mean_max`` / ``kl_max_max``: per-token KL(reference ‖ candidate) over the reference texts,
  against the base and against the current ``production`` version (texts that mention a subject
  an edit of the version targets are left out: changing those is the point of the edit);
- ``top1_agreement_min``: share of positions whose top-1 prediction is unchanged vs the base;
- ``perplexity_ratio_max``: candidate perplexity / base perplexity on the reference texts;
- ``tasks``: accuracy floors of the toy world (``fact_recall`` on facts no edit targets,
  ``induction_accuracy``), for models that ship a toy world;
- ``expectations``: ``{"prompt", "must" | "must_not"}`` cases for the next token(s).

Edits add their own intent cases: a ROME edit requires its prompt to produce its new target.
Each result records the metric, the threshold, pass/fail and the worst examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from editors import Edit, EditStack
from editors.toyworld import World, reference_corpus
from editors.toyworld.evaluate import induction_accuracy, top1_accuracy
from service.registry import InvalidArgument
from service.serving import ModelHost, Token

TASKS = ("fact_recall", "induction_accuracy")
#: Limits of a suite (CompareVersions reads its reference texts in one call of at most 1,024 prompts).
MAX_REFERENCE_TEXTS = 1024
MAX_EXPECTATIONS = 1024
WORST = 5
#: Reference texts per forward in a check run: each chunk is one background job of the scheduler.
CHECK_BATCH = 16


@dataclass(frozen=True)
class Suite:
    reference_texts: tuple[str, ...]
    kl_mean_max: float = 0.05
    kl_max_max: float = 5.0
    top1_agreement_min: float = 0.9
    perplexity_ratio_max: float = 1.1
    tasks: dict[str, float] = field(default_factory=dict)
    expectations: tuple[dict[str, str], ...] = ()

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Suite:
        """Validate a suite spec (as stored); raise InvalidArgument naming the bad field."""
        if not isinstance(spec, dict):
            raise InvalidArgument("suite must be a JSON object")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidArgument(f"unknown suite fields: {sorted(unknown)}")
        texts = spec.get("reference_texts")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InvalidArgument("reference_texts must be a non-empty list of non-empty strings")
        if len(texts) > MAX_REFERENCE_TEXTS:
            raise InvalidArgument(f"reference_texts has {len(texts)} texts; at most {MAX_REFERENCE_TEXTS}")
        numbers = {}
        for name in ("kl_mean_max", "kl_max_max", "top1_agreement_min", "perplexity_ratio_max"):
            value = spec.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"{name} must be a finite non-negative number")
            numbers[name] = float(value)
        tasks = spec.get("tasks", {})
        if not isinstance(tasks, dict) or set(tasks) - set(TASKS):
            raise InvalidArgument(f"tasks must map some of {', '.join(TASKS)} to floors")
        for task, floor in tasks.items():
            if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
                raise InvalidArgument(f"tasks.{task} is an accuracy floor: a number in [0, 1], got {floor!r:.40}")
        expectations = spec.get("expectations", [])
        if isinstance(expectations, list) and len(expectations) > MAX_EXPECTATIONS:
            raise InvalidArgument(f"expectations has {len(expectations)} cases; at most {MAX_EXPECTATIONS}")
        for i, case in enumerate(expectations if isinstance(expectations, list) else [None]):
            if (
                not isinstance(case, dict)
                or not isinstance(case.get("prompt"), str)
                or not (isinstance(case.get("must"), str) or isinstance(case.get("must_not"), str))
            ):
                raise InvalidArgument(f"expectations[{i}] must be {{prompt, must | must_not}}")
        return cls(
            tuple(texts), tasks={k: float(v) for k, v in tasks.items()}, expectations=tuple(expectations), **numbers
        )

    def to_spec(self) -> dict[str, Any]:
        spec = asdict(self)
        spec["reference_texts"] = list(self.reference_texts)
        spec["expectations"] = list(self.expectations)
        return spec


def default_toy_suite() -> dict[str, Any]:
    """The toy model's suite: a ROME fact edit passes it; an induction-head ablation and a steering
    vector at a huge scale do not."""
    return Suite(tuple(reference_corpus()[-200:]), tasks={"fact_recall": 0.9, "induction_accuracy": 0.8}).to_spec()


@dataclass(frozen=True)
class CheckResult:
    name: str
    metric: float
    threshold: float
    comparison: str  # "<=" or ">="
    passed: bool
    worst: list[dict[str, Any]]


def _result(name: str, metric: float, threshold: float, comparison: str, worst: list[dict[str, Any]]) -> CheckResult:
    passed = metric <= threshold if comparison == "<=" else metric >= threshold
    return CheckResult(name, float(metric), threshold, comparison, bool(passed), worst[:WORST])


def targeted_subjects(edits: Sequence[Edit]) -> set[str]:
    subjects = set()
    for edit in edits:
        request = (getattr(edit, "provenance", None) or {}).get("request") or {}
        if isinstance(request.get("subject"), str):
            subjects.add(request["subject"])
    return subjects


def intent_cases(edits: Sequence[Edit]) -> list[dict[str, str]]:
    """The cases edits carry: explicit ``provenance.intent``, or a ROME edit's prompt → target."""
    cases = []
    for edit in edits:
        provenance = getattr(edit, "provenance", None) or {}
        for case in provenance.get("intent", ()):
            cases.append(dict(case))
        request = provenance.get("request") or {}
        if provenance.get("method") == "rome" and not provenance.get("intent"):
            prompt = str(request["prompt"])
            text = prompt.format(request["subject"]) if "{}" in prompt else prompt
            cases.append({"prompt": text, "must": str(request["target"])})
    return cases


class CheckRunner:
    """Runs a suite on one version of a hosted model (concurrently with serving: stacks are per call)."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host
        world_file = Path(host.source) / "world.json"
        self.world = World.load(world_file) if world_file.exists() else None

    def _logprobs(self, stack: EditStack, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities of ``texts`` under ``stack``: background jobs of the scheduler, a chunk
        of texts per forward, so serving goes on between them."""
        host = self.host
        encoded = host.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)
        chunks = []
        for start in range(0, len(texts), CHECK_BATCH):
            part = {key: value[start : start + CHECK_BATCH].to(host.device) for key, value in encoded.items()}

            def run(part: dict[str, torch.Tensor] = part) -> torch.Tensor:
                with host.surgeon.apply(stack):
                    return host.model(**part).logits.float().log_softmax(dim=-1).cpu()

            chunks.append(host.forward(run, background=True))
        return torch.cat(chunks), encoded["input_ids"], encoded["attention_mask"].bool()

    def run(
        self,
        suite: Suite,
        version: int,
        production: int,
        progress: Callable[[int, int, str], None] = lambda done, total, name: None,
    ) -> list[CheckResult]:
        host = self.host
        candidate = host.stack(version)
        edits = list(candidate.edits)
        skip = targeted_subjects(edits)
        texts = [t for t in suite.reference_texts if not any(s in t for s in skip)]
        cases = [*suite.expectations, *intent_cases(edits)]
        steps = [
            "kl_vs_base",
            "kl_vs_production",
            "top1_agreement",
            "perplexity_ratio",
            *[f"task:{t}" for t in suite.tasks],
            *(["expectations"] if cases else []),
        ]
        results: list[CheckResult] = []
        cand_lp, ids, mask = self._logprobs(candidate, texts)
        base_lp, _, _ = self._logprobs(host.stack(0), texts)
        for done, step in enumerate(steps):
            progress(done, len(steps), step)
            if step.startswith("kl_vs"):
                ref_lp = base_lp if step == "kl_vs_base" else self._logprobs(host.stack(production), texts)[0]
                kl = (ref_lp.exp() * (ref_lp - cand_lp)).sum(-1).masked_fill(~mask, 0)
                per_text = kl.max(dim=1).values
                worst = [
                    {"text": texts[i], "max_kl": round(per_text[i].item(), 4)}
                    for i in per_text.argsort(descending=True)[:WORST].tolist()
                ]
                results.append(_result(f"{step}_mean", kl[mask].mean().item(), suite.kl_mean_max, "<=", worst))
                results.append(_result(f"{step}_max", kl[mask].max().item(), suite.kl_max_max, "<=", worst))
            elif step == "top1_agreement":
                same = (base_lp.argmax(-1) == cand_lp.argmax(-1)) | ~mask
                per_text = 1 - (~same).float().sum(1) / mask.float().sum(1)
                worst = [
                    {"text": texts[i], "agreement": round(per_text[i].item(), 3)}
                    for i in per_text.argsort()[:WORST].tolist()
                ]
                results.append(_result(step, same[mask].float().mean().item(), suite.top1_agreement_min, ">=", worst))
            elif step == "perplexity_ratio":
                target, valid = ids[:, 1:], mask[:, 1:]
                nll_b = -base_lp[:, :-1].gather(-1, target.unsqueeze(-1)).squeeze(-1)
                nll_c = -cand_lp[:, :-1].gather(-1, target.unsqueeze(-1)).squeeze(-1)
                increase = ((nll_c - nll_b) * valid).sum(1) / valid.sum(1).clamp(min=1)
                worst = [
                    {"text": texts[i], "nll_increase": round(increase[i].item(), 4)}
                    for i in increase.argsort(descending=True)[:WORST].tolist()
                ]
                ratio = math.exp((nll_c[valid].mean() - nll_b[valid].mean()).item())
                results.append(_result(step, ratio, suite.perplexity_ratio_max, "<=", worst))
            elif step.startswith("task:"):
                results.append(
                    self._task(step.removeprefix("task:"), suite.tasks[step.removeprefix("task:")], candidate, skip)
                )
            else:
                results.append(self._expectations(cases, version))
        progress(len(steps), len(steps), "done")
        return results

    def _task(self, task: str, floor: float, stack: EditStack, skip: set[str]) -> CheckResult:
        if self.world is None:
            raise InvalidArgument(f"task {task!r} needs a toy world next to the model")
        host = self.host
        world = self.world
        facts = [f for f in world.facts if f.subject not in skip]

        def run() -> float:
            with host.surgeon.apply(stack):
                if task == "induction_accuracy":
                    return induction_accuracy(host.model, host.tokenizer, world)
                return top1_accuracy(
                    host.model, host.tokenizer, [f.canonical_prompt for f in facts], [f.object for f in facts]
                )

        return _result(f"task:{task}", host.forward(run, background=True), floor, ">=", [])

    def _expectations(self, cases: list[dict[str, str]], version: int) -> CheckResult:
        failures = []
        for case in cases:
            events = self.host.generate(version, case["prompt"], max_tokens=4)
            produced = "".join(event.text for event in events if isinstance(event, Token))
            ok = (case.get("must") is None or produced.strip().startswith(case["must"])) and (
                case.get("must_not") is None or case["must_not"] not in produced
            )
            if not ok:
                failures.append({**case, "produced": produced.strip()})
        share = 1 - len(failures) / len(cases)
        return _result("expectations", share, 1.0, ">=", failures)
