"""Activation statistics from a reference corpus, for mean and resample ablation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from editors.batching import encode_batch
from editors.edits import HeadAblation, NeuronAblation
from editors.errors import InvalidEditError
from editors.progress import progress_bar
from editors.sites import Site
from editors.surgeon import Surgeon
from editors.validation import check_int


@dataclass(frozen=True)
class ActivationStats:
    """Per-token statistics of one site: the mean and a random sample (pool) of token rows."""

    site: str
    mean: torch.Tensor  # site shape without batch/position, e.g. [n_heads, d_head]
    pool: torch.Tensor  # [pool_size, *mean.shape]
    n_tokens: int


def _batches(texts: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.inference_mode()
def activation_stats(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str],
    site: str,
    pool_size: int = 256,
    seed: int = 0,
    batch_size: int = 32,
    max_length: int = 128,
    show_progress: bool = True,
) -> ActivationStats:
    """Mean of ``site``'s activations over every non-pad token of ``texts``, and a uniform sample of them.

    Streams: memory stays at one batch plus the pool (the sample keeps the ``pool_size`` tokens
    with the smallest random priorities seen so far).
    """
    Site.parse(site, "site")
    check_int("pool_size", pool_size, 1)
    generator = torch.Generator().manual_seed(seed)
    total: torch.Tensor | None = None
    n_tokens = 0
    pool = priorities = None
    with surgeon.trace([site]) as cache, progress_bar(None, f"activation stats at {site}", show_progress) as bar:
        for batch in _batches(texts, batch_size):
            bar.update(len(batch))
            encoded = encode_batch(tokenizer, batch, surgeon.device_dtype[0], max_length)
            surgeon.model(**encoded)
            rows = cache[site][encoded["attention_mask"].bool()].double().cpu()
            total = rows.sum(dim=0) if total is None else total + rows.sum(dim=0)
            n_tokens += rows.shape[0]
            keys = torch.rand(rows.shape[0], generator=generator, dtype=torch.float64)
            if pool is not None:
                rows, keys = torch.cat([pool, rows]), torch.cat([priorities, keys])
            keep = keys.argsort()[:pool_size]
            pool, priorities = rows[keep], keys[keep]
    if total is None or pool is None:
        raise InvalidEditError("texts", "is empty", "at least one text")
    return ActivationStats(site, (total / n_tokens).float(), pool.float(), n_tokens)


def head_ablation(
    layer: int, heads: Sequence[int], mode: str = "zero", stats: ActivationStats | None = None, seed: int = 0
) -> HeadAblation:
    """A :class:`HeadAblation`; ``means``/``pool`` come from ``stats`` of ``blocks.{layer}.attn.hook_z``."""
    return HeadAblation(
        layer=layer,
        heads=tuple(heads),
        mode=mode,
        seed=seed,
        **_from_stats(stats, f"blocks.{layer}.attn.hook_z", heads, mode),
    )


def neuron_ablation(
    layer: int, neurons: Sequence[int], mode: str = "zero", stats: ActivationStats | None = None, seed: int = 0
) -> NeuronAblation:
    """A :class:`NeuronAblation`, with statistics of ``blocks.{layer}.mlp.hook_post`` from ``stats``."""
    return NeuronAblation(
        layer=layer,
        neurons=tuple(neurons),
        mode=mode,
        seed=seed,
        **_from_stats(stats, f"blocks.{layer}.mlp.hook_post", neurons, mode),
    )


def _from_stats(stats: ActivationStats | None, site: str, units: Sequence[int], mode: str) -> dict[str, torch.Tensor]:
    if mode == "zero":
        return {}
    if stats is None or stats.site != site:
        raise InvalidEditError(
            "stats", f"mode {mode!r} needs statistics of {site}", f"activation_stats(..., site={site!r})"
        )
    index = torch.tensor(list(units))
    if mode == "mean":
        return {"means": stats.mean[index]}
    return {"pool": stats.pool[:, index]}
