"""Small helpers for padded batches."""

from __future__ import annotations

import torch


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left- or right-padded batches."""
    return attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(dim=1)
