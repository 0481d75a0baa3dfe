"""``kl``: mean per-token KL(reference ‖ candidate) over a corpus, token-weighted, with its interval.

Params: ``corpus`` (default: the suite's first), ``against`` (``base`` or an alias; default the
suite's ``reference``), ``max`` (default 0.05), ``rule`` (default ``strict``: the interval's upper
bound must be at most ``max``). The worst examples are the texts with the largest single-token KL.
"""

from __future__ import annotations

from service.checks.context import CheckContext
from service.checks.kinds.corpus import CorpusComparison, measure, parse_comparison
from service.checks.params import Params
from service.checks.result import CheckResult, judge
from service.checks.stats import ratio_of_sums
from service.checks.suite_basics import SuiteBasics

KIND = "kl"


def parse(params: Params, suite: SuiteBasics) -> CorpusComparison:
    return parse_comparison(params, suite, "max", 0.05, "strict")


def run(context: CheckContext, name: str, config: CorpusComparison) -> CheckResult:
    stats, reference = measure(context, config)
    estimate = ratio_of_sums(stats.kl_sum, stats.tokens, context.resamples, context.seed)
    worst = [
        {"text": stats.texts[i], "max_token_kl": round(stats.kl_max[i].item(), 4)}
        for i in stats.kl_max.argsort(descending=True)[:5].tolist()
    ]
    what = "mean per-token KL(reference ‖ candidate)"
    return judge(name, KIND, estimate, config.threshold, "<=", config.rule, what, reference, worst)
