"""``top1_agreement``: the share of corpus positions whose top-1 next token is unchanged.

Params: ``corpus``, ``against`` (as ``kl``), ``min`` (default 0.9), ``rule`` (default ``strict``).
"""

from __future__ import annotations

from service.checks.context import CheckContext
from service.checks.kinds.corpus import CorpusComparison, measure, parse_comparison
from service.checks.params import Params
from service.checks.result import CheckResult, judge
from service.checks.stats import ratio_of_sums
from service.checks.suite_basics import SuiteBasics

KIND = "top1_agreement"


def parse(params: Params, suite: SuiteBasics) -> CorpusComparison:
    return parse_comparison(params, suite, "min", 0.9, "strict")


def run(context: CheckContext, name: str, config: CorpusComparison) -> CheckResult:
    stats, reference = measure(context, config)
    estimate = ratio_of_sums(stats.agree, stats.tokens, context.resamples, context.seed)
    per_text = stats.agree.double() / stats.tokens.clamp(min=1)
    worst = [
        {"text": stats.texts[i], "agreement": round(per_text[i].item(), 3)} for i in per_text.argsort()[:5].tolist()
    ]
    what = "top-1 agreement"
    return judge(name, KIND, estimate, config.threshold, ">=", config.rule, what, reference, worst)
