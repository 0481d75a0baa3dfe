"""Regression checks for side effects: does a candidate version do what it claims, and what else
did it change? Check kinds are registered by name (``service.checks.kinds``); a suite lists
instances with params (``service.checks.suite``); every comparing metric is paired and reported
with a 95% bootstrap interval and n (``service.checks.stats``), and each check states the rule that
turns the interval into pass or fail (``service.checks.result``)."""

from service.checks.defaults import default_suite, default_toy_suite
from service.checks.kinds import KINDS
from service.checks.result import CheckResult
from service.checks.runner import CheckRunner
from service.checks.suite import Suite

__all__ = ["KINDS", "CheckResult", "CheckRunner", "Suite", "default_suite", "default_toy_suite"]
