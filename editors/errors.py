"""The exceptions of the editors library."""

from __future__ import annotations


class InvalidEditError(ValueError):
    """An edit (or a request to build one) is invalid.

    This is the one exception type raised for every invalid edit: unknown site, layer or head
    out of range, wrong tensor shape or dtype, NaN/Inf, non-finite or absurd scale, malformed
    serialised form. ``field`` names the offending field and ``allowed`` says what is accepted;
    both are also in the message.
    """

    def __init__(self, field: str, problem: str, allowed: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.allowed = allowed
        message = f"{field}: {problem}"
        if allowed:
            message += f" (allowed: {allowed})"
        super().__init__(message)


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no adapter; the message lists the supported ones."""
