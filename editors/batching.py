"""Small helpers for padded batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left- or right-padded batches."""
    return attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(dim=1)


def encode_batch(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    device: torch.device | str = "cpu",
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``texts``, padded on the tokenizer's padding side and
    placed on ``device``. Works with tokenizers that have no pad token (Llama's, Pythia's): the
    padding positions are masked, so their id only has to exist — the pad token, else EOS, else 0.
    The tokenizer itself is left as it is."""
    rows = tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)["input_ids"]
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    width = max((len(row) for row in rows), default=0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if tokenizer.padding_side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
