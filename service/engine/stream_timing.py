"""A generation stream's latencies, for the serving metrics: how long its request waited in the
scheduler's queue before its prefill, how long until its first token reached its reader, and
the time per output token after that.

A :class:`StreamClock` starts when a request reaches its model host (after authentication and
the version's resolution, before tokenising). The scheduler tells it the queue wait, from the
engine process too (the wait travels back with the step's events); the stream's reader tells it
of the tokens as the caller receives them (:mod:`service.engine.stream_reading`), so the times include
the hand-over from the scheduler to the reader, where a busy serving process shows.
"""

from __future__ import annotations

import time
from typing import Protocol


class LatencySink(Protocol):
    """Where a model's stream latencies go (the server's Prometheus series), all in seconds."""

    def prompt(self, tokens: int) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def per_output_token(self, seconds: float) -> None: ...


class StreamClock:
    """One stream's clock: each latency is observed once, as it becomes known."""

    __slots__ = ("_first", "_prompt_tokens", "_sink", "_started")

    def __init__(self, sink: LatencySink, prompt_tokens: int, started: float) -> None:
        self._sink = sink
        self._prompt_tokens = prompt_tokens
        self._started = started  # time.monotonic() when the request reached its model
        self._first: float | None = None

    def queued(self, seconds: float) -> None:
        """The scheduler admitted the stream into a prefill after ``seconds`` in its queue (its
        prompt's tokens count as prefilled then)."""
        self._sink.queue_wait(seconds)
        self._sink.prompt(self._prompt_tokens)

    def tokens_read(self) -> None:
        """The reader received tokens: the first time, that is the time to first token."""
        if self._first is None:
            self._first = time.monotonic()
            self._sink.first_token(self._first - self._started)

    def finished(self, produced: int) -> None:
        """The stream ended after ``produced`` tokens (not cancelled, not failed): the mean time
        per token after the first, as the reader received them."""
        if self._first is not None and produced > 1:
            self._sink.per_output_token((time.monotonic() - self._first) / (produced - 1))
