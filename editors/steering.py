"""Steering vectors derived from contrastive prompt pairs (mean difference, or PCA)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from editors.batching import encode_batch, last_token_index
from editors.edits import Steering
from editors.errors import InvalidEditError
from editors.sites import RESIDUAL_POINTS
from editors.surgeon import Surgeon
from editors.validation import check_choice, check_int

DERIVATION_METHODS = ("mean_diff", "pca")


def _check_pairs(pairs: object) -> list[tuple[str, str]]:
    allowed = "a non-empty list of (positive, negative) pairs of non-empty strings"
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise InvalidEditError("pairs", f"expected pairs, got {pairs!r}", allowed)
    for i, pair in enumerate(pairs):
        if (
            not isinstance(pair, Sequence)
            or isinstance(pair, str)
            or len(pair) != 2
            or not all(isinstance(p, str) and p.strip() for p in pair)
        ):
            raise InvalidEditError(f"pairs[{i}]", f"is not a pair of non-empty strings: {pair!r}", allowed)
    return [(p, n) for p, n in pairs]


def _warn_unknown_words(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> None:
    """Words the tokenizer turns into its unknown token carry no meaning into the direction: say which."""
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return
    words = sorted(
        {w for text in texts for w in text.split() if unknown in tokenizer(w, add_special_tokens=False)["input_ids"]}
    )
    if words:
        shown = ", ".join(repr(w) for w in words[:20]) + (f" and {len(words) - 20} more" if len(words) > 20 else "")
        warnings.warn(f"the tokenizer does not know {shown}: they become {tokenizer.unk_token!r}", stacklevel=3)


@torch.inference_mode()
def last_token_activations(
    surgeon: Surgeon, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], site: str
) -> torch.Tensor:
    """``[len(prompts), ...]``: the activation at ``site`` on each prompt's last token (float32)."""
    encoded = encode_batch(tokenizer, prompts, surgeon.device_dtype[0])
    with surgeon.trace([site]) as cache:
        surgeon.model(**encoded)
    last = last_token_index(encoded["attention_mask"])
    return cache[site][torch.arange(len(prompts), device=last.device), last].float().cpu()


def derive_steering(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    layer: int,
    point: str = "hook_resid_pre",
    method: str = "mean_diff",
    scale: float = 1.0,
) -> Steering:
    """A :class:`Steering` edit from (positive, negative) prompt pairs, read at their last tokens.

    ``mean_diff`` (CAA): the mean of ``act(positive) - act(negative)``. ``pca``: the first
    principal direction of those differences (uncentred, sign-aligned with their mean), scaled
    to the differences' mean projection on it. The pairs and method are kept as provenance.
    """
    checked = _check_pairs(pairs)
    _warn_unknown_words(tokenizer, [text for pair in checked for text in pair])
    check_int("layer", layer, 0, surgeon.dims.n_layers - 1)
    check_choice("point", point, RESIDUAL_POINTS)
    check_choice("method", method, DERIVATION_METHODS)
    site = f"blocks.{layer}.{point}"
    diffs = (
        last_token_activations(surgeon, tokenizer, [p for p, _ in checked], site)
        - last_token_activations(surgeon, tokenizer, [n for _, n in checked], site)
    ).double()
    if method == "mean_diff":
        vector = diffs.mean(dim=0)
    else:
        direction = torch.linalg.svd(diffs, full_matrices=False).Vh[0]
        projections = diffs @ direction
        if projections.mean() < 0:
            direction, projections = -direction, -projections
        vector = direction * projections.mean()
    provenance = {"method": method, "layer": layer, "point": point, "pairs": [list(p) for p in checked]}
    return Steering(site=site, vector=vector.float(), scale=scale, provenance=provenance)
