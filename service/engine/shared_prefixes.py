"""Newcomers whose prompt starts like one being prefilled wait for its blocks of the prefix cache
instead of computing the same start again (deduplication within a burst).

Requests that share a system prompt often arrive together: after a start, after a version
changes, from a check run's template. Without this they would all be admitted before any of them
stored the shared start (service.engine.prefix_cache), and each would compute it. A newcomer waits for a
prefill in flight (or one admitted just before it) when that prefill will store at least half of
the newcomer's uncached prompt and has at most twice that much left to run: it then starts no
later than it would have finished alone, and computes only the rest. A short prompt that shares
only a little, or whose peer is a long prompt with many chunks to go, is admitted as before.

Everything here is a hint: it matches prompts by hashes of their blocks, and the newcomer's own
lookup, after the wait, is what decides (exactly) what it reuses.
"""

from __future__ import annotations

from collections.abc import Sequence

from editors import EditStack
from service.engine.prefix_cache import PrefixCache


class PendingPrefixes:
    """The block chains that prefills in flight or just admitted will store, and how much each of
    those prefills has left to run (columns)."""

    def __init__(self, cache: PrefixCache) -> None:
        self.cache = cache
        self._left: dict[int, int] = {}  # block chain hash → fewest columns left to a prefill storing it

    def add(self, chain: Sequence[int], left: int) -> None:
        """A prefill with ``left`` columns to run will store the blocks of ``chain``."""
        for key in chain:
            if self._left.get(key, left + 1) > left:
                self._left[key] = left

    def uncached(self, stack: EditStack, tokens: Sequence[int]) -> int:
        """Prompt tokens a prefill of ``tokens`` under ``stack`` would run now."""
        return len(tokens) - self._stored(stack, tokens) * self.cache.block

    def should_wait(self, stack: EditStack, tokens: Sequence[int], chain: Sequence[int]) -> bool:
        """Whether a prompt should wait for a pending prefill's blocks (see the module docstring)."""
        if not chain or chain[0] not in self._left:  # shares not even its first block with one
            return False
        block = self.cache.block
        stored = self._stored(stack, tokens)
        uncached = len(tokens) - stored * block
        for number in range(stored, (len(tokens) - 1) // block):  # a lookup leaves a token to run
            left = self._left.get(chain[number])
            if left is None:
                return False
            if 2 * (number + 1 - stored) * block >= uncached and left <= 2 * uncached:
                return True
        return False

    def _stored(self, stack: EditStack, tokens: Sequence[int]) -> int:
        """Whole blocks of ``tokens`` a lookup would take from the cache now."""
        return min(self.cache.missing(stack, tokens).start, (len(tokens) - 1) // self.cache.block)
