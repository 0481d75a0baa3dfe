"""A check's result, and the rules that turn an estimate and its interval into pass or fail."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.checks.stats import Estimate

#: How a check reads its interval against its threshold:
#: ``strict``: the whole interval must be on the passing side (a pass means "confidently fine");
#: ``lenient``: fail only when the whole interval is on the failing side (a significant breach);
#: ``estimate``: the point estimate alone decides.
RULES = ("strict", "lenient", "estimate")
WORST = 5


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    metric: float
    ci_low: float
    ci_high: float
    n: int
    threshold: float
    comparison: str  # "<=" or ">="
    rule: str
    passed: bool
    reason: str
    reference: str = ""
    worst: list[dict[str, Any]] = field(default_factory=list)
    #: False when the version gave the check nothing to measure (n = 0): neither a pass nor a
    #: failure; it does not block the gate, and reports show it as not applicable, never as ok
    applicable: bool = True


def nothing_to_check(name: str, kind: str, reason: str) -> CheckResult:
    """Not applicable (n = 0): the version gives this check nothing to measure, and ``reason`` says
    why. It does not block the gate (``passed``), and says it measured nothing (``applicable``)."""
    return CheckResult(
        name, kind, 0.0, 0.0, 0.0, 0, 0.0, ">=", "estimate", True, f"not applicable: {reason}", applicable=False
    )


def judge(
    name: str,
    kind: str,
    estimate: Estimate,
    threshold: float,
    comparison: str,
    rule: str,
    what: str,
    reference: str = "",
    worst: list[dict[str, Any]] | None = None,
) -> CheckResult:
    """Apply ``rule``; the reason says which number decided, in words (``what`` names the metric)."""
    at_most = comparison == "<="
    decisive = {
        "strict": estimate.high if at_most else estimate.low,
        "lenient": estimate.low if at_most else estimate.high,
        "estimate": estimate.value,
    }[rule]
    passed = decisive <= threshold if at_most else decisive >= threshold
    bound = {
        "strict": "upper bound" if at_most else "lower bound",
        "lenient": "lower bound" if at_most else "upper bound",
    }
    said = f"the 95% interval's {bound[rule]}" if rule in bound else "the estimate"
    interval = f"{estimate.value:.4g} [{estimate.low:.4g}, {estimate.high:.4g}], n={estimate.n}"
    if passed:
        reason = f"{what} {interval}: {said} {decisive:.4g} {comparison} {threshold:.4g}"
    else:
        other = ">" if at_most else "<"
        reason = f"{what} {interval}: {said} {decisive:.4g} {other} {threshold:.4g} ({rule} rule)"
    return CheckResult(
        name,
        kind,
        estimate.value,
        estimate.low,
        estimate.high,
        estimate.n,
        threshold,
        comparison,
        rule,
        bool(passed),
        reason,
        reference,
        (worst or [])[:WORST],
    )
