"""A decode step and a prefill chunk in one forward: prompt tokens ride with the running rows.

Run apart, a prefill is a forward of its own between two decode steps: on a GPU, where a small
batch's forward costs its kernel launches whatever its size, that is a whole step's time for a few
prompts. Here the running rows' next tokens and the chunk's prompt tokens go through the model
together, with no padding between them: every token is a batch row of one position
(``[tokens, 1]``), so the projections and MLPs run once over all of them, and each token carries its
own position id and its own row's edit stack (every edit acts position by position, so a token
computes alone what it computes in its row). Only attention needs the rows back: the model's own
attention (SDPA) runs twice, once over the decode rows' KV cache (one query each) and once over
the prefill's (the chunk's queries, causal), through an attention function registered with
``transformers`` for this forward alone. Keys and values are written where each side's own
forward would write them, so afterwards the batch and the prefill are exactly as if each had run
its forward: a decode row's logits are the same numbers, a prompt's up to the order of
floating-point sums.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from editors.surgeon import RowStacks, Surgeon
from service.engine.decode_batch import SDPA, DecodeBatch, Prefill
from service.engine.prefix_cache import reuse_is_exact

#: The attention implementation a riding forward switches the model to, for that forward only.
RIDING_ATTENTION = "scalpel_riding"

_riding: ContextVar[_Riding | None] = ContextVar("scalpel_riding", default=None)


def can_ride(model: nn.Module) -> bool:
    """Whether ``model``'s prefills may ride in its decode steps: it attends with SDPA over the
    whole context (a sliding window is measured in cache columns, which this layout does not
    keep in step with the rows' own) and has an output head to take the kept positions."""
    config = model.config
    has_head = model.get_output_embeddings() is not None
    return config._attn_implementation == SDPA and reuse_is_exact(config) and has_head


class _Riding:
    """One riding forward's state, and the cache the model writes to during it: each layer's new
    keys and values (``[decode rows + chunk tokens, heads, 1, head dim]``) go to the batch's cache
    and to the prefill's, and the attention function reads both back with each side's mask. (Not
    a ``Cache``: it holds no layers of its own, and the models only call :meth:`update` and
    :meth:`get_seq_length`.)"""

    def __init__(
        self, batch: DecodeBatch, prefill: Prefill, columns: int, decode_mask: torch.Tensor, chunk_mask: torch.Tensor
    ) -> None:
        self.batch, self.prefill = batch, prefill
        self.rows, self.prompts, self.columns = len(batch), prefill.ids.shape[0], columns
        self.decode_mask, self.chunk_mask = decode_mask, chunk_mask  # 4D, True where a query may look
        self.sides: tuple[torch.Tensor, ...] = ()  # the layer being run: both sides' keys and values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        n = self.rows
        decode_kv = self.batch.cache.update(key_states[:n], value_states[:n], layer_idx)
        chunk_kv = self.prefill.cache.update(
            self._as_chunk(key_states[n:]), self._as_chunk(value_states[n:]), layer_idx
        )
        self.sides = (*decode_kv, *chunk_kv)
        return key_states, value_states

    def _as_chunk(self, states: torch.Tensor) -> torch.Tensor:
        """``[prompts × columns, heads, 1, dim]`` → ``[prompts, heads, columns, dim]``."""
        return states.reshape(self.prompts, self.columns, states.shape[1], states.shape[-1]).transpose(1, 2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # (position ids are given; nothing reads the length)


def _riding_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The decode rows' attention and the chunk's, each by the model's SDPA over its own cache."""
    riding, base = _riding.get(), ALL_ATTENTION_FUNCTIONS[SDPA]
    assert riding is not None, "the riding attention runs only inside ride()"
    keys, values, chunk_keys, chunk_values = riding.sides
    n = riding.rows
    decoded, _ = base(module, query[:n], keys, values, riding.decode_mask, scaling=scaling, is_causal=False)
    chunk = riding._as_chunk(query[n:])
    prefilled, _ = base(module, chunk, chunk_keys, chunk_values, riding.chunk_mask, scaling=scaling, is_causal=False)
    # both come back [rows, positions, heads, dim]: one position per token again
    return torch.cat([decoded, prefilled.reshape(-1, 1, *prefilled.shape[2:])]), None


AttentionInterface.register(RIDING_ATTENTION, _riding_attention)


#: Per prefill in flight: the running rows and chunk width its token stacks were built for, and them.
_built: WeakKeyDictionary[Prefill, tuple[RowStacks, int, RowStacks]] = WeakKeyDictionary()


def _token_stacks(surgeon: Surgeon, rows: RowStacks, prefill: Prefill, columns: int) -> RowStacks:
    """Every token's stack: each running row's, then each prompt's once per chunk column (every
    token is a row of its own). Kept while the running rows and the chunk width stay the same,
    as they do for a long prompt's chunks riding step after step."""
    built = _built.get(prefill)
    if built is not None and built[0] is rows and built[1] == columns:
        return built[2]
    stacks = surgeon.rows(rows.stacks + tuple(stack for stack in prefill.stacks for _ in range(columns)))
    _built[prefill] = (rows, columns, stacks)
    return stacks


@contextmanager
def _switched(model: nn.Module, riding: _Riding, keep: torch.Tensor) -> Iterator[None]:
    """The model attends with the riding function and its head computes logits only at ``keep``
    (the decode rows and each prompt's last chunk position), for one forward."""
    config, head = model.config, model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][keep], *args[1:]))
    token, attention = _riding.set(riding), config._attn_implementation
    config._attn_implementation = RIDING_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = attention
        _riding.reset(token)
        handle.remove()


def ride(
    model: nn.Module,
    surgeon: Surgeon,
    batch: DecodeBatch,
    rows: RowStacks,
    tokens: torch.Tensor,
    prefill: Prefill,
) -> tuple[torch.Tensor, tuple[DecodeBatch, torch.Tensor] | None]:
    """``batch.step(model, surgeon, rows, tokens)`` and ``prefill.advance()`` in one forward
    (``model`` must :func:`can_ride`): the batch's next logits ``[rows, vocab]``, and what
    ``advance`` returns (None while the prefill has chunks left). If the forward fails, both are
    left as they were before it and the error is raised."""
    start, end = prefill.done, prefill.chunk_end()
    columns, prompts = end - start, prefill.ids.shape[0]
    decode_mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
    seen = prefill.mask[:, : prefill.past + end].bool()  # the chunk's rows: cached, earlier and own columns
    width = seen.shape[1]
    causal = (
        torch.arange(width, device=seen.device) <= torch.arange(width - columns, width, device=seen.device)[:, None]
    )
    riding = _Riding(batch, prefill, columns, decode_mask.bool()[:, None, None, :], seen[:, None, None, :] & causal)
    ids = torch.cat([tokens, prefill.ids[:, start:end].reshape(-1)]).unsqueeze(1)
    positions = torch.cat([batch.positions, prefill.position_ids[:, start:end].reshape(-1)]).unsqueeze(1)
    last_columns = len(batch) + columns * torch.arange(1, prompts + 1, device=ids.device) - 1
    keep = torch.cat([torch.arange(len(batch), device=ids.device), last_columns])
    try:
        with _switched(model, riding, keep), surgeon.apply_rows(_token_stacks(surgeon, rows, prefill, columns)):
            logits = model(
                input_ids=ids,
                attention_mask=decode_mask.new_ones((1, 1, 1, 1), dtype=torch.bool),  # (the 4D form: used as is)
                position_ids=positions,
                cache=riding,
                use_cache=True,
            ).logits[:, -1]
    except BaseException:
        batch.rewind()
        prefill.rewind()
        raise
    batch.advanced(decode_mask)
    return logits[: len(batch)], prefill.ran(end, logits[len(batch) :])
