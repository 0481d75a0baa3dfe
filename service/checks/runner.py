"""Runs a suite's checks on one version of a hosted model, concurrently with serving: every
forward is a background job or rows of the running batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from service.checks.context import CheckContext
from service.checks.kinds import KINDS
from service.checks.result import CheckResult
from service.checks.suite import Suite
from service.registry import InvalidArgument, Registry

if TYPE_CHECKING:
    from service.hosting import ModelHost


class CheckRunner:
    def __init__(self, host: ModelHost, registry: Registry) -> None:
        self.host = host
        self.registry = registry

    def run(
        self,
        suite: Suite,
        version: int,
        progress: Callable[[int, int, str], None] = lambda done, total, name: None,
    ) -> list[CheckResult]:
        """One result per check instance. A check that cannot run on this version (its reference
        alias is missing, its inputs all filtered out) fails with the reason; the others still run."""
        context = CheckContext(self.host, self.registry, version, suite.basics.seed, suite.basics.resamples)
        results = []
        for done, check in enumerate(suite.checks):
            progress(done, len(suite.checks), check.name)
            try:
                results.append(KINDS[check.kind].run(context, check.name, check.config))
            except InvalidArgument as exc:
                results.append(
                    CheckResult(check.name, check.kind, 0.0, 0.0, 0.0, 0, 0.0, "", "error", False, f"error: {exc}")
                )
        progress(len(suite.checks), len(suite.checks), "done")
        return results
