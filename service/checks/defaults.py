"""Default suites: any model gets the corpus checks over its reference corpus plus the checks its
own edits imply; the toy model adds its shipped task files and its world's relations and subjects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from editors.toyworld import World
from editors.toyworld.world import TEMPLATES

GENERIC_CORPUS = Path(__file__).with_name("generic_corpus.txt")


def default_suite(reference_texts: list[str] | None = None) -> dict[str, Any]:
    """KL (against the base and production), top-1 agreement and perplexity over the model's
    reference corpus (a built-in English corpus when it ships none), and the edits' own intent and
    locality checks."""
    texts = reference_texts or [t for t in GENERIC_CORPUS.read_text().splitlines() if t.strip()]
    return {
        "reference": "base",
        "corpora": {"reference": texts},
        "checks": [
            {"kind": "kl", "name": "kl_vs_base", "params": {"max": 0.05}},
            {"kind": "kl", "name": "kl_vs_production", "params": {"max": 0.05, "against": "production"}},
            {"kind": "top1_agreement", "params": {"min": 0.9}},
            {"kind": "perplexity_ratio", "params": {"max": 1.1}},
            {"kind": "edit_intent", "params": {"include": ["efficacy", "stated", "steering", "located"]}},
            {"kind": "edit_locality"},
        ],
    }


def default_toy_suite(world: World, reference_texts: list[str]) -> dict[str, Any]:
    """The toy model's suite: a ROME fact edit passes it; an induction-head ablation and a steering
    vector at a huge scale do not."""
    suite = default_suite(reference_texts[-200:])
    relations = dict.fromkeys(fact.relation for fact in world.facts)
    suite["relations"] = [[t.replace("{s}", "{}") for t in TEMPLATES[relation]] for relation in relations]
    suite["subjects"] = world.subjects
    suite["checks"] += [
        # ROME on the toy model generalises to about half its relation's other phrasings (issue 13):
        # held to that, apart from efficacy, which must be perfect
        {
            "kind": "edit_intent",
            "name": "edit_generalisation",
            "params": {"include": ["generalisation"], "min_pass_rate": 0.5, "rule": "lenient"},
        },
        {
            "kind": "generation_task",
            "name": "fact_recall",
            "params": {"shipped": "fact_recall", "min_pass_rate": 0.9, "max_tokens": 1},
        },
        {
            "kind": "generation_task",
            "name": "induction",
            "params": {"shipped": "induction", "min_pass_rate": 0.8, "max_tokens": 1},
        },
    ]
    return suite
