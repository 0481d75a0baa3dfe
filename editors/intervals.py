"""Paired estimates with 95% percentile-bootstrap confidence intervals, for the kit's evaluations
and the service's checks alike (service.checks.stats).

A metric over many examples is a ratio of sums: a mean is ``sum(values) / n``, a token-weighted
mean is ``sum(per-text sums) / sum(per-text tokens)``. The bootstrap resamples examples with
replacement, so pairing and weighting are kept in every resample; it is seeded, so the same run
gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

LEVEL = 0.95


class NoExamples(ValueError):
    """An estimate over nothing: every input was filtered out."""


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int


def ratio_of_sums(
    numerators: torch.Tensor,
    denominators: torch.Tensor,
    resamples: int,
    seed: int,
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> Estimate:
    """``transform(sum(numerators) / sum(denominators))`` over ``n`` examples, with its interval."""
    numerators, denominators = numerators.double().flatten(), denominators.double().flatten()
    n = len(numerators)
    if n == 0:
        raise NoExamples("a check has no examples to measure (every input was filtered out)")
    value = transform(numerators.sum() / denominators.sum().clamp(min=1e-12))
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(n, (resamples, n), generator=generator)
    totals = denominators[picks].sum(dim=1).clamp(min=1e-12)
    samples = transform(numerators[picks].sum(dim=1) / totals)
    tail = (1 - LEVEL) / 2
    low, high = torch.quantile(samples, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Estimate(_finite(value.item()), _finite(low), _finite(high), n)


def mean(values: torch.Tensor, resamples: int, seed: int) -> Estimate:
    return ratio_of_sums(values, torch.ones_like(values, dtype=torch.float64), resamples, seed)


def _finite(value: float) -> float:
    """JSON and protobuf carry no infinities well: clamp to the largest float."""
    if math.isnan(value):
        return value
    return max(min(value, 1.7976931348623157e308), -1.7976931348623157e308)
