"""Paired estimates with 95% percentile-bootstrap confidence intervals.

Every metric that compares two versions is computed per example on the *same* inputs (a text, a
task item), and a metric over many examples is a ratio of sums (see :mod:`editors.intervals`, the
one bootstrap the checks and the kit's fact-edit evaluations share). Here a check that has no
examples left is the caller's mistake: INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from editors import intervals
from editors.intervals import LEVEL, Estimate
from service.registry import InvalidArgument

__all__ = ["LEVEL", "Estimate", "mean", "ratio_of_sums"]


def ratio_of_sums(
    numerators: torch.Tensor,
    denominators: torch.Tensor,
    resamples: int,
    seed: int,
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> Estimate:
    """``transform(sum(numerators) / sum(denominators))`` over ``n`` examples, with its interval."""
    try:
        return intervals.ratio_of_sums(numerators, denominators, resamples, seed, transform)
    except intervals.NoExamples as exc:
        raise InvalidArgument(str(exc)) from None


def mean(values: torch.Tensor, resamples: int, seed: int) -> Estimate:
    return ratio_of_sums(values, torch.ones_like(values, dtype=torch.float64), resamples, seed)
