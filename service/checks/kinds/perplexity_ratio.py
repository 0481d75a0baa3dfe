"""``perplexity_ratio``: candidate perplexity over reference perplexity on a corpus
(``exp`` of the mean per-token NLL increase, token-weighted).

Params: ``corpus``, ``against`` (as ``kl``), ``max`` (default 1.1), ``rule`` (default ``strict``).
"""

from __future__ import annotations

from service.checks.context import CheckContext
from service.checks.kinds.corpus import CorpusComparison, measure, parse_comparison
from service.checks.params import Params
from service.checks.result import CheckResult, judge
from service.checks.stats import ratio_of_sums
from service.checks.suite_basics import SuiteBasics

KIND = "perplexity_ratio"


def parse(params: Params, suite: SuiteBasics) -> CorpusComparison:
    return parse_comparison(params, suite, "max", 1.1, "strict")


def run(context: CheckContext, name: str, config: CorpusComparison) -> CheckResult:
    stats, reference = measure(context, config)
    estimate = ratio_of_sums(
        stats.nll_increase, stats.tokens, context.resamples, context.seed, transform=lambda mean: mean.exp()
    )
    per_text = stats.nll_increase.double() / stats.tokens.clamp(min=1)
    worst = [
        {"text": stats.texts[i], "nll_increase": round(per_text[i].item(), 4)}
        for i in per_text.argsort(descending=True)[:5].tolist()
    ]
    what = "perplexity ratio (candidate / reference)"
    return judge(name, KIND, estimate, config.threshold, "<=", config.rule, what, reference, worst)
