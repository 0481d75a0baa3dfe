"""Finding induction heads: heads that attend from a repeated token to what followed it last time."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def repeated_token_batch(
    token_ids: Sequence[int], n: int, length: int, seed: int = 0, prefix_id: int | None = None
) -> torch.Tensor:
    """``[n, (1 if prefix_id is not None) + 2 * length]``: random sequences from ``token_ids``, each repeated once."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor(list(token_ids))
    rows = torch.stack([pool[torch.randperm(len(pool), generator=generator)[:length]] for _ in range(n)])
    batch = torch.cat([rows, rows], dim=1)
    if prefix_id is not None:
        batch = torch.cat([torch.full((n, 1), prefix_id), batch], dim=1)
    return batch


@torch.inference_mode()
def induction_head_scores(model: nn.Module, batch: torch.Tensor, length: int) -> torch.Tensor:
    """``[n_layers, n_heads]`` induction scores (Olsson et al. 2022) on a :func:`repeated_token_batch`.

    A head's score is its mean attention, from each token of the second copy, to the token that
    followed the same token in the first copy. Attention weights need the eager attention
    implementation, so the model is switched to it for this call (not thread-safe with serving).
    """
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        device = next(model.parameters()).device
        attentions = model(input_ids=batch.to(device), output_attentions=True).attentions
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)
    queries = torch.arange(batch.shape[1] - length, batch.shape[1])
    keys = queries - length + 1
    return torch.stack([a[:, :, queries, keys].float().mean(dim=(0, 2)).cpu() for a in attentions])


def top_heads(scores: torch.Tensor, threshold: float = 0.4) -> list[tuple[int, int]]:
    """Heads whose score is at least ``threshold``, best first, as (layer, head)."""
    picked = [(layer, head) for layer, head in (scores >= threshold).nonzero().tolist()]
    return sorted(picked, key=lambda lh: -scores[lh[0], lh[1]].item())
