"""The prefix cache's bookkeeping: exact keys per stack, least recently used out, bytes bounded."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from service.engine.prefix_cache import PrefixCache, block_chain
from service.engine.shared_prefixes import PendingPrefixes

LAYERS, HEADS, HEAD_DIM = 2, 2, 4
#: Bytes of one 2-token block: keys and values of every layer, float32.
BLOCK_BYTES = LAYERS * 2 * HEADS * 2 * HEAD_DIM * 4


class _Stack:
    """Stands for an EditStack: the cache keys on its identity and keeps it alive while needed."""


def _kv(tokens: list[int]) -> torch.Tensor:
    """Keys and values ``[2 × layers, heads, tokens, head dim]`` that encode each token (so a
    lookup's result can be checked)."""
    values = torch.tensor(tokens, dtype=torch.float32).view(1, -1, 1).expand(HEADS, -1, HEAD_DIM)
    return torch.stack([values + layer for layer in range(LAYERS)] + [-values - layer for layer in range(LAYERS)])


def _store(cache: PrefixCache, stack: _Stack, tokens: list[int]) -> None:
    blocks = cache.missing(stack, tokens)
    cache.insert(stack, tokens, blocks, _kv(tokens[blocks.start * 2 : blocks.stop * 2]))


def test_a_lookup_finds_the_longest_stored_prefix_of_its_own_stack_and_leaves_a_token_to_run() -> None:
    cache, stack, other = PrefixCache(1 << 20, block=2), _Stack(), _Stack()
    _store(cache, stack, [1, 2, 3, 4, 5])  # two whole blocks: [1, 2] and [3, 4]
    assert len(cache) == 2 and cache.nbytes == 2 * BLOCK_BYTES
    found = cache.lookup(stack, [1, 2, 3, 4, 9, 9])
    assert found is not None and found.length == 4
    assert found.layer(1)[0][0, :, 0].tolist() == [2.0, 3.0, 4.0, 5.0]  # tokens 1..4, layer 1 adds 1
    assert cache.lookup(stack, [1, 2, 3, 4]).length == 2  # the last token always runs
    assert cache.lookup(stack, [1, 2, 7, 4, 5]).length == 2  # a different second block stops the chain
    assert cache.lookup(stack, [3, 4, 3, 4]) is None  # block [3, 4] follows [1, 2] only
    assert cache.lookup(other, [1, 2, 3, 4, 5]) is None  # another stack's keys and values differ
    assert cache.hit_tokens == 4 + 2 + 2
    assert cache.missing(stack, [1, 2, 3, 4, 6, 7, 8]) == range(2, 3)  # only [6, 7] is new
    _store(cache, stack, [1, 2, 3, 4, 6, 7, 8])
    assert len(cache) == 3 and cache.lookup(stack, [1, 2, 3, 4, 6, 7, 8]).length == 6


def test_the_least_recently_used_blocks_leave_first_a_prefix_s_first_blocks_last() -> None:
    cache, stack = PrefixCache(4 * BLOCK_BYTES, block=2), _Stack()
    _store(cache, stack, [1, 2, 3, 4])
    _store(cache, stack, [5, 6, 7, 8])
    cache.lookup(stack, [1, 2, 3, 4, 0])  # [1, 2, 3, 4] is now the most recent, [1, 2] most of all
    _store(cache, stack, [9, 9])  # over budget: the least recent block goes, [7, 8] before [5, 6]
    assert cache.nbytes == 4 * BLOCK_BYTES and len(cache) == 4
    assert cache.missing(stack, [5, 6, 7, 8]) == range(1, 2)  # [5, 6] is still there, [7, 8] is not
    _store(cache, stack, [8, 8])  # then [5, 6] goes
    assert cache.lookup(stack, [5, 6, 0]) is None
    assert cache.lookup(stack, [1, 2, 3, 4, 0]).length == 4
    assert cache.nbytes <= cache.max_bytes


def test_a_stack_is_kept_alive_only_while_it_has_blocks_and_a_zero_budget_stores_nothing() -> None:
    cache = PrefixCache(BLOCK_BYTES, block=2)
    stack = _Stack()
    alive = weakref.ref(stack)
    _store(cache, stack, [1, 2])
    del stack
    gc.collect()
    assert alive() is not None  # its block needs its identity to stay unique
    _store(cache, _Stack(), [3, 4])  # pushes the only block of the first stack out
    gc.collect()
    assert alive() is None and len(cache) == 1
    off = PrefixCache(0, block=2)
    assert off.missing(_Stack(), [1, 2, 3]) == range(1, 1)
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixCache(-1)


def test_a_prompt_waits_for_a_pending_prefill_only_where_it_would_reuse_much_of_it_soon() -> None:
    """(service.engine.shared_prefixes) With 2-token blocks: a prompt sharing most of its uncached start
    with a prefill that has little left to run waits for it; one sharing a small part, one whose
    peer has far more left to run, one under another stack and one whose start is stored already
    (nothing more to share) are admitted now."""
    cache, stack, other = PrefixCache(1 << 20, block=2), _Stack(), _Stack()
    peer = [1, 2, 3, 4, 5, 6, 7, 8]
    pending = PendingPrefixes(cache)
    pending.add(block_chain(stack, peer, 2), left=8)

    def waits(tokens: list[int], under: _Stack = stack) -> bool:
        return pending.should_wait(under, tokens, block_chain(under, tokens, 2))

    assert waits([1, 2, 3, 4, 5, 6, 9])  # 6 of its 7 tokens will be stored, and 8 columns are left
    assert not waits([1, 2, 9, 9, 9, 9, 9])  # 2 of 7: it runs as soon as it can
    assert not waits([1, 2, 3, 4, 5, 6, 9], under=other)
    far = PendingPrefixes(cache)
    far.add(block_chain(stack, peer, 2), left=100)  # a long prompt, many chunks to go
    assert not far.should_wait(stack, [1, 2, 3, 4, 5, 6, 9], block_chain(stack, [1, 2, 3, 4, 5, 6, 9], 2))
    _store(cache, stack, peer)
    assert pending.uncached(stack, [1, 2, 3, 4, 5, 6, 9]) == 1
    assert not waits([1, 2, 3, 4, 5, 6, 9])  # its start is stored: its own lookup takes it now
