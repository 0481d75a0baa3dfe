"""The exceptions of the editors library."""

from __future__ import annotations

from collections.abc import Sequence

#: The longest ``problem`` text kept in a message: a bad value is quoted by a short prefix, so a
#: megabyte of input never becomes a megabyte of error (gRPC clients cannot read a status whose
#: details exceed their metadata limit).
MAX_PROBLEM_CHARS = 300


def _brief(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else f"{text[:MAX_PROBLEM_CHARS]}… ({len(text)} characters)"


class InvalidEditError(ValueError):
    """An edit (or a request to build one) is invalid.

    This is the one exception type raised for every invalid edit: unknown site, layer or head
    out of range, wrong tensor shape or dtype, NaN/Inf, non-finite or absurd scale, malformed
    serialised form. ``field`` names the offending field and ``allowed`` says what is accepted;
    both are also in the message.
    """

    def __init__(self, field: str, problem: str, allowed: str | None = None) -> None:
        self.field = _brief(field)
        self.problem = _brief(problem)
        self.allowed = allowed
        message = f"{self.field}: {self.problem}"
        if allowed:
            message += f" (allowed: {allowed})"
        super().__init__(message)


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no adapter; the message lists the supported ones."""


class Cancelled(RuntimeError):
    """Long work stopped because its ``should_stop`` callback said so (the caller went away)."""


class NotExportable(ValueError):
    """Some edits have no exact form in the requested format: one line per edit says why."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("; ".join(self.reasons))


class BadSteeringFile(ValueError):
    """A steering file that does not fit the model, or is not one."""
