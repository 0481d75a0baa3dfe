"""What the three corpus checks (kl, top1_agreement, perplexity_ratio) share: which corpus, against
which version, and the texts left after those about edited subjects are set aside."""

from __future__ import annotations

from dataclasses import dataclass

from service.checks.context import CheckContext, TokenStats
from service.checks.params import Params
from service.checks.suite_basics import SuiteBasics
from service.registry import InvalidArgument


@dataclass(frozen=True)
class CorpusComparison:
    corpus: str
    texts: tuple[str, ...]
    against: str
    threshold: float
    rule: str


def parse_comparison(params: Params, suite: SuiteBasics, bound: str, default: float, rule: str) -> CorpusComparison:
    corpus = params.text("corpus", next(iter(suite.corpora), None))
    if corpus is None or corpus not in suite.corpora:
        raise InvalidArgument(f"{params.where}.corpus must name one of the suite's corpora: {sorted(suite.corpora)}")
    against = params.text("against", suite.reference) or suite.reference
    high = 1.0 if bound == "min" else float("inf")
    threshold = params.number(bound, default, 0.0, high)
    comparison = CorpusComparison(corpus, tuple(suite.corpora[corpus]), against, float(threshold), params.rule(rule))
    params.done()
    return comparison


def measure(context: CheckContext, comparison: CorpusComparison) -> tuple[TokenStats, str]:
    """The candidate against the comparison's reference on the corpus, minus texts about edited
    subjects (changing those is the point of the edit); and the reference, in words."""
    reference, said = context.reference(comparison.against)
    skip = context.targeted_subjects()
    texts = [t for t in comparison.texts if not any(subject in t for subject in skip)]
    return context.token_stats(reference, texts), f"{said}, corpus {comparison.corpus!r}"
