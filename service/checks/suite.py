"""A model's check suite: corpora, what the suite knows of the model's world, and a list of check
instances, each a registered kind with params. Stored as JSON (YAML through the CLI); every
change is a stored revision whose SHA-256 each run records.

    reference: base            # what comparing checks compare against: base, or an alias
    seed: 0                    # bootstrap resampling and sampled neighbours
    resamples: 1000            # bootstrap resamples per interval
    corpora: {reference: [text, …]}
    relations: [[template, paraphrase, …], …]   # optional, "{}" for the subject
    subjects: [subject, …]                        # optional
    checks:
      - {kind: kl, name: kl_vs_base, params: {max: 0.05}}
      - {kind: choice_task, name: mmlu_mini, params: {items: [...], max_drop: 0.02}}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.checks.kinds import KINDS
from service.checks.params import MAX_ITEMS, Params
from service.checks.suite_basics import SuiteBasics
from service.registry import InvalidArgument
from service.registry.registry import check_name

MAX_CHECKS = 64
MAX_CORPUS_TEXTS = 1024
MAX_RESAMPLES = 10_000
FIELDS = ("reference", "seed", "resamples", "corpora", "relations", "subjects", "checks")
LEGACY_FIELDS = (
    "reference_texts",
    "kl_mean_max",
    "kl_max_max",
    "top1_agreement_min",
    "perplexity_ratio_max",
    "tasks",
    "expectations",
)


@dataclass(frozen=True)
class CheckInstance:
    kind: str
    name: str
    config: Any


@dataclass(frozen=True)
class Suite:
    basics: SuiteBasics
    checks: tuple[CheckInstance, ...]

    @classmethod
    def from_spec(cls, spec: object, model_dir: Path | None = None) -> Suite:
        """Validate a suite spec (as stored); raise InvalidArgument naming the bad field.
        ``model_dir`` holds the task files the model ships (``shipped:``)."""
        if not isinstance(spec, dict):
            raise InvalidArgument("suite must be a mapping")
        if "checks" not in spec and set(spec) & set(LEGACY_FIELDS):
            spec = from_legacy(spec)
        unknown = sorted(set(spec) - set(FIELDS))
        if unknown:
            raise InvalidArgument(f"unknown suite fields {unknown}; known: {', '.join(FIELDS)}")
        top = Params("suite", spec)
        corpora = _corpora(spec.get("corpora"))
        top.value("corpora")
        relations = _relations(spec.get("relations"))
        top.value("relations")
        subjects = tuple(top.texts("subjects", required=False))
        reference = top.text("reference", "base") or "base"
        if reference != "base":
            check_name("alias", reference)
        basics = SuiteBasics(
            corpora,
            reference,
            model_dir,
            top.integer("seed", 0, 0, 2**31 - 1),
            top.integer("resamples", 1000, 100, MAX_RESAMPLES),
            relations,
            subjects,
        )
        raw_checks = top.value("checks")
        if not isinstance(raw_checks, list) or not 0 < len(raw_checks) <= MAX_CHECKS:
            raise InvalidArgument(f"checks must be a list of 1..{MAX_CHECKS} check instances")
        checks, names = [], set()
        for i, raw in enumerate(raw_checks):
            where = f"checks[{i}]"
            if not isinstance(raw, dict) or set(raw) - {"kind", "name", "params"}:
                raise InvalidArgument(f"{where} must be {{kind, name, params}}")
            kind = raw.get("kind")
            if kind not in KINDS:
                raise InvalidArgument(f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r:.40}")
            name = raw.get("name", kind)
            if not isinstance(name, str):
                raise InvalidArgument(f"{where}.name must be a string")
            check_name("check", name)
            if name in names:
                raise InvalidArgument(f"{where}.name {name!r} is used twice; name each instance of a kind")
            names.add(name)
            params = Params(f"{where}.params", raw.get("params"))
            checks.append(CheckInstance(kind, name, KINDS[kind].parse(params, basics)))
        return cls(basics, tuple(checks))

    def reference_texts(self) -> list[str]:
        """The first corpus: the texts CompareVersions and ROME statistics fall back on."""
        return list(next(iter(self.basics.corpora.values()), []))


def _corpora(raw: object) -> dict[str, list[str]]:
    if not isinstance(raw, dict) or not raw:
        raise InvalidArgument("corpora must map names to lists of texts (at least one corpus)")
    corpora = {}
    for name, texts in raw.items():
        check_name("corpus", name)
        corpora[name] = Params("corpora", {name: texts}).texts(name)
        if len(texts) > MAX_CORPUS_TEXTS:
            raise InvalidArgument(f"corpora.{name} has {len(texts)} texts; at most {MAX_CORPUS_TEXTS}")
    return corpora


def _relations(raw: object) -> tuple[tuple[str, ...], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_ITEMS:
        raise InvalidArgument("relations must be a list of template groups")
    groups = []
    for i, group in enumerate(raw):
        templates = Params("relations", {str(i): group}).texts(str(i))
        if not all(t.count("{}") == 1 for t in templates):
            raise InvalidArgument(f"relations[{i}]: every template holds exactly one '{{}}' for the subject")
        groups.append(tuple(templates))
    return tuple(groups)


def from_legacy(spec: dict[str, Any]) -> dict[str, Any]:
    """The first release's fixed suite format, as check instances (stored suites keep working):
    its KL bounds, agreement and perplexity thresholds, toy-world tasks and expectation cases."""
    unknown = sorted(set(spec) - set(LEGACY_FIELDS))
    if unknown:
        raise InvalidArgument(f"unknown suite fields {unknown}")
    kl_max = spec.get("kl_mean_max", 0.05)
    checks: list[dict[str, Any]] = [
        {"kind": "kl", "name": "kl_vs_base", "params": {"max": kl_max, "against": "base"}},
        {"kind": "kl", "name": "kl_vs_production", "params": {"max": kl_max, "against": "production"}},
        {"kind": "top1_agreement", "params": {"min": spec.get("top1_agreement_min", 0.9), "against": "base"}},
        {"kind": "perplexity_ratio", "params": {"max": spec.get("perplexity_ratio_max", 1.1), "against": "base"}},
    ]
    tasks = spec.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise InvalidArgument("tasks must map task names to accuracy floors")
    for task, floor in tasks.items():
        shipped = {"induction_accuracy": "induction"}.get(task, task)
        checks.append(
            {"kind": "generation_task", "name": shipped, "params": {"shipped": shipped, "min_pass_rate": floor}}
        )
    expectations = spec.get("expectations") or []
    if expectations:
        items = []
        for i, case in enumerate(expectations if isinstance(expectations, list) else [None]):
            if not isinstance(case, dict) or not isinstance(case.get("prompt"), str):
                raise InvalidArgument(f"expectations[{i}] must be {{prompt, must | must_not}}")
            expect = {"starts_with": case["must"]} if "must" in case else {"not_contains": case.get("must_not")}
            items.append({"prompt": case["prompt"], **expect})
        checks.append({"kind": "generation_task", "name": "expectations", "params": {"items": items, "max_tokens": 4}})
    checks.append({"kind": "edit_intent"})
    return {"corpora": {"reference": spec.get("reference_texts")}, "checks": checks}
