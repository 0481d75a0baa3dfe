"""Prompt prefixes already prefilled, kept per edit stack so that a later prompt starting the same
way skips their forward (automatic prefix caching, as vLLM's).

A prompt's keys and values at positions ``0..p`` depend only on its first ``p`` tokens and on the
edit stack it ran under: attention is causal and every edit acts position by position (steering,
ablations, resample draws keyed by absolute position, weight deltas). So they are stored in blocks
of ``block`` tokens, each block keyed by its parent block and its own tokens (exact keys: no hash
can make two prefixes collide), the first block's parent being its stack. A lookup follows the
chain as far as it matches and returns the keys and values of that prefix, always leaving at
least one prompt token to run (its logits pick the first new token).

Blocks are evicted least recently used first, a prefix's early blocks after its later ones, once
the stored tensors pass ``max_bytes``. Everything here runs on the scheduler's thread.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from editors.surgeon import EditStack

#: Tokens per block: a prompt reuses its longest stored prefix that is a multiple of this.
BLOCK_TOKENS = 16

#: Per layer: keys and values ``[heads, tokens, head dim]``.
LayerKV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class CachedPrefix:
    """The first ``length`` tokens of a prompt: every layer's keys, then every layer's values,
    ``[2 × layers, heads, length, head dim]``."""

    length: int
    kv: torch.Tensor

    def layer(self, index: int) -> LayerKV:
        layers = self.kv.shape[0] // 2
        return self.kv[index], self.kv[layers + index]


@dataclass(eq=False)
class _Block:
    number: int
    root: int  # its stack's root number
    kv: torch.Tensor  # as CachedPrefix.kv, one block's tokens, in memory of its own


def reuse_is_exact(config: Any) -> bool:
    """Whether a prefill from stored prefixes computes what a full one does for a model with this
    ``config``. Not under a sliding window: a cached prefix is followed by a gap of masked cache
    columns (the rest of its prompt is left-padded to the batch's), and ``transformers`` measures
    the window in cache columns, so the gap would move tokens out of it."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return "sliding_attention" not in layer_types
    return getattr(config, "sliding_window", None) is None


def block_chain(stack: EditStack, tokens: Sequence[int], block: int = BLOCK_TOKENS) -> list[int]:
    """A hash per whole block of ``tokens`` under ``stack``, each naming the prompt's start up to
    that block's end: two prompts' first ``b`` hashes agree when their first ``b`` blocks do (and,
    rarely, by collision). For scheduling hints (service.engine.shared_prefixes); the store's own keys are
    exact."""
    chain, parent = [], id(stack)
    for start in range(0, len(tokens) - block + 1, block):
        parent = hash((parent, tuple(tokens[start : start + block])))
        chain.append(parent)
    return chain


class PrefixCache:
    """Stored prompt prefixes (see the module docstring); ``max_bytes`` bounds their tensors."""

    def __init__(self, max_bytes: int, block: int = BLOCK_TOKENS) -> None:
        if max_bytes < 0 or block < 1:
            raise ValueError(f"a prefix cache needs max_bytes >= 0 and block >= 1, got {max_bytes} and {block}")
        self.max_bytes, self.block = max_bytes, block
        self.nbytes = 0
        #: Prompt tokens served from here instead of a forward, since the start.
        self.hit_tokens = 0
        self._numbers = itertools.count(1)
        self._blocks: OrderedDict[tuple[int, tuple[int, ...]], _Block] = OrderedDict()  # least recent first
        #: id(stack) → the stack (kept alive while it has blocks), its root number, its block count.
        self._roots: dict[int, tuple[EditStack, int, int]] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, stack: EditStack, tokens: Sequence[int]) -> CachedPrefix | None:
        """The longest stored prefix of ``tokens`` under ``stack``, shorter than ``tokens``."""
        root = self._roots.get(id(stack))
        if root is None:
            return None
        keys = self._chain(root[1], tokens, (len(tokens) - 1) // self.block)
        if not keys:
            return None
        self._touch(keys)
        length = len(keys) * self.block
        self.hit_tokens += length
        return CachedPrefix(length, torch.cat([self._blocks[key].kv for key in keys], dim=2))

    def missing(self, stack: EditStack, tokens: Sequence[int]) -> range:
        """The block numbers of ``tokens``' whole blocks that are not stored yet (those after its
        longest stored prefix), for :meth:`insert`."""
        whole = len(tokens) // self.block
        if self.max_bytes == 0:
            return range(whole, whole)
        root = self._roots.get(id(stack))
        stored = len(self._chain(root[1], tokens, whole)) if root is not None else 0
        return range(stored, whole)

    def insert(self, stack: EditStack, tokens: Sequence[int], blocks: range, kv: torch.Tensor) -> None:
        """Store blocks ``blocks`` (as :meth:`missing` gave them) of ``tokens`` under ``stack``;
        ``kv`` holds their keys and values as :attr:`CachedPrefix.kv` does, from token
        ``blocks.start * block`` on (each block is copied: evicting it frees its memory)."""
        if not blocks:
            return
        stack_key = id(stack)
        if stack_key not in self._roots:
            self._roots[stack_key] = (stack, next(self._numbers), 0)
        _, root, count = self._roots[stack_key]
        chain = self._chain(root, tokens, blocks.start)
        if len(chain) < blocks.start:  # evicted in the meantime: its descendants would be unreachable
            return
        parent = self._blocks[chain[-1]].number if chain else root
        for offset, number in enumerate(blocks):
            piece = kv[:, :, offset * self.block : (offset + 1) * self.block]
            if piece.nbytes > self.max_bytes:  # a budget smaller than one block
                break
            key = (parent, tuple(tokens[number * self.block : (number + 1) * self.block]))
            if key not in self._blocks:
                self._blocks[key] = _Block(next(self._numbers), root, piece.clone())
                self.nbytes += piece.nbytes
                count += 1
            chain.append(key)
            parent = self._blocks[key].number
        self._roots[stack_key] = (stack, root, count)
        self._touch(chain)
        self._evict()

    def _chain(self, root: int, tokens: Sequence[int], limit: int) -> list[tuple[int, tuple[int, ...]]]:
        """The keys of ``tokens``' first blocks that are stored, at most ``limit`` of them."""
        keys, parent = [], root
        for number in range(limit):
            key = (parent, tuple(tokens[number * self.block : (number + 1) * self.block]))
            block = self._blocks.get(key)
            if block is None:
                break
            keys.append(key)
            parent = block.number
        return keys

    def _touch(self, chain: list[tuple[int, tuple[int, ...]]]) -> None:
        """Mark a prefix's blocks used, its first ones last: they are evicted after its later ones
        (which nothing can reach without them)."""
        for key in reversed(chain):
            self._blocks.move_to_end(key)

    def _evict(self) -> None:
        roots = {root: stack_key for stack_key, (_, root, _) in self._roots.items()}
        while self.nbytes > self.max_bytes:
            _, block = self._blocks.popitem(last=False)
            self.nbytes -= block.kv.nbytes
            stack_key = roots[block.root]
            stack, root, count = self._roots[stack_key]
            if count == 1:
                del self._roots[stack_key]
            else:
                self._roots[stack_key] = (stack, root, count - 1)
