"""Finding SAE features by what they respond to: the features that tell two sets of texts apart
(a concept's positive and negative sentences), read at each text's last token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from editors.batching import encode_batch, last_token_index
from editors.errors import InvalidEditError
from editors.sae import SparseAutoencoder
from editors.surgeon import Surgeon


@dataclass(frozen=True)
class FeatureContrast:
    """One feature's mean activation at the last token of the positive and the negative texts."""

    feature: int
    difference: float  # positive_mean - negative_mean
    positive_mean: float
    negative_mean: float


@torch.inference_mode()
def last_token_features(
    surgeon: Surgeon, tokenizer: PreTrainedTokenizerBase, sae: SparseAutoencoder, texts: Sequence[str]
) -> torch.Tensor:
    """``[len(texts), d_sae]``: the SAE's feature activations at each text's last token."""
    encoded = encode_batch(tokenizer, texts, surgeon.device_dtype[0])
    point = f"{sae.site}.sae.acts"
    with surgeon.trace([point], saes=[sae]) as cache:
        surgeon.model(**encoded)
    rows = torch.arange(len(texts), device=encoded["input_ids"].device)
    return cache[point][rows, last_token_index(encoded["attention_mask"])].float().cpu()


def contrast_features(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    sae: SparseAutoencoder,
    pairs: Sequence[tuple[str, str]],
) -> list[FeatureContrast]:
    """Every feature ranked by how much more it fires on the pairs' positive texts than on their
    negative ones (the first fires most for the positive side, the last for the negative)."""
    if not pairs:
        raise InvalidEditError("pairs", "is empty", "(positive, negative) text pairs")
    positive = last_token_features(surgeon, tokenizer, sae, [p for p, _ in pairs]).mean(dim=0)
    negative = last_token_features(surgeon, tokenizer, sae, [n for _, n in pairs]).mean(dim=0)
    difference = positive - negative
    order = difference.argsort(descending=True).tolist()
    return [FeatureContrast(i, float(difference[i]), float(positive[i]), float(negative[i])) for i in order]
