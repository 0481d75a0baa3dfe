"""Finding SAE features by what they respond to: the features that tell two sets of texts apart
(a concept's positive and negative sentences), read at each text's last token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from editors.batching import encode_batch
from editors.errors import InvalidEditError
from editors.sae import SparseAutoencoder
from editors.steering import last_token_activations
from editors.surgeon import Surgeon
from editors.validation import check_int


@dataclass(frozen=True)
class FeatureContrast:
    """One feature's mean activation at the last token of the positive and the negative texts."""

    feature: int
    difference: float  # positive_mean - negative_mean
    positive_mean: float
    negative_mean: float


def last_token_features(
    surgeon: Surgeon, tokenizer: PreTrainedTokenizerBase, sae: SparseAutoencoder, texts: Sequence[str]
) -> torch.Tensor:
    """``[len(texts), d_sae]``: the SAE's feature activations at each text's last token."""
    return sae.encode(last_token_activations(surgeon, tokenizer, texts, sae.site))


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


@dataclass(frozen=True)
class FeatureContext:
    """A token a feature fires on, with the tokens before it."""

    text: str  # the window of tokens up to and including the token
    token: str
    activation: float


@dataclass(frozen=True)
class FeatureCard:
    """What a dashboard shows of one feature (Neuronpedia's card): how often it fires, its
    strongest contexts in a corpus, and the tokens its decoder direction raises and lowers
    directly through the unembedding."""

    feature: int
    density: float  # share of the corpus's tokens it fires on
    max_activation: float
    contexts: list[FeatureContext]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]


@torch.inference_mode()
def feature_card(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    sae: SparseAutoencoder,
    feature: int,
    texts: Sequence[str],
    top: int = 10,
    window: int = 8,
    batch: int = 64,
    run: Callable[[Callable[[], torch.Tensor]], torch.Tensor] = lambda forward: forward(),
) -> FeatureCard:
    """``feature``'s card over ``texts`` (read in batches of ``batch``; memory holds one batch).
    ``run(forward)`` runs each batch's forward (a server runs them at background priority, between
    its decode steps)."""
    check_int("feature", feature, 0, sae.d_sae - 1)
    check_int("top", top, 1, 1000)
    if not texts:
        raise InvalidEditError("texts", "is empty", "a corpus of texts")
    point = f"{sae.site}.sae.acts"
    found: list[tuple[float, int, int, list[int]]] = []  # (activation, text, position, ids)
    fired = seen = 0
    for start in range(0, len(texts), batch):
        encoded = encode_batch(tokenizer, texts[start : start + batch], surgeon.device_dtype[0])

        def forward(encoded: dict[str, torch.Tensor] = encoded) -> torch.Tensor:
            with torch.inference_mode(), surgeon.trace([point], saes=[sae]) as cache:
                surgeon.model(**encoded)
            return cache[point][..., feature].float().cpu()

        acts = run(forward) * encoded["attention_mask"].cpu()
        fired += int((acts > 0).sum())
        seen += int(encoded["attention_mask"].sum())
        values, flat = acts.flatten().topk(min(top, acts.numel()))
        for value, index in zip(values.tolist(), flat.tolist(), strict=True):
            row, position = divmod(index, acts.shape[1])
            if value > 0:
                found.append((value, start + row, position, encoded["input_ids"][row].tolist()))
        found = sorted(found, key=lambda item: -item[0])[:top]
    contexts = [
        FeatureContext(
            tokenizer.decode(ids[max(0, position - window + 1) : position + 1]),
            tokenizer.convert_ids_to_tokens(ids[position]),
            round(value, 4),
        )
        for value, _, position, ids in found
    ]
    effects = surgeon.model.get_output_embeddings().weight.float() @ sae.W_dec[feature].to(surgeon.device_dtype[0])
    high, low = effects.topk(top), (-effects).topk(top)
    names = tokenizer.convert_ids_to_tokens
    return FeatureCard(
        feature,
        round(fired / max(seen, 1), 6),
        found[0][0] if found else 0.0,
        contexts,
        [(t, round(float(v), 4)) for t, v in zip(names(high.indices.tolist()), high.values, strict=True)],
        [(t, round(-float(v), 4)) for t, v in zip(names(low.indices.tolist()), low.values, strict=True)],
    )
