"""Key statistics for ROME: the second moment ``C = E[k kᵀ]`` of an MLP output projection's inputs.

Computed once per (model weights, layer, corpus) and cached as a safetensors artifact whose name
is the SHA-256 of those three identities, so any later edit at that layer reuses it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from editors.batching import encode_batch
from editors.errors import InvalidEditError
from editors.progress import progress_bar
from editors.surgeon import Surgeon
from editors.validation import check_int

#: ``progress(texts_done, texts_total)``.
Progress = Callable[[int, int], None]


def corpus_sha256(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


@torch.inference_mode()
def key_covariance(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layer: int,
    batch_size: int = 32,
    max_length: int = 128,
    progress: Progress | None = None,
    show_progress: bool = True,
) -> tuple[torch.Tensor, int]:
    """``(C, n_tokens)``: the uncentred second moment of ``blocks.{layer}.mlp.hook_post`` over
    every non-pad token of ``texts`` (float64 accumulation, float32 result)."""
    check_int("layer", layer, 0, surgeon.dims.n_layers - 1)
    if not texts:
        raise InvalidEditError("texts", "is empty", "at least one text")
    site = f"blocks.{layer}.mlp.hook_post"
    total = torch.zeros(surgeon.dims.d_mlp, surgeon.dims.d_mlp, dtype=torch.float64)
    n_tokens = 0
    with (
        surgeon.trace([site]) as cache,
        progress_bar(len(texts), f"key covariance, layer {layer}", show_progress) as bar,
    ):
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            encoded = encode_batch(tokenizer, batch, surgeon.device_dtype[0], max_length)
            surgeon.model(**encoded)
            keys = cache[site][encoded["attention_mask"].bool()].double().cpu()
            total += keys.T @ keys
            n_tokens += keys.shape[0]
            bar.update(len(batch))
            if progress is not None:
                progress(min(start + batch_size, len(texts)), len(texts))
    return (total / n_tokens).float(), n_tokens


def default_cache_dir() -> Path:
    """``$SCALPEL_DATA_DIR/cache/covariance``, else ``~/.cache/scalpel/covariance``."""
    base = os.environ.get("SCALPEL_DATA_DIR")
    root = Path(base) / "cache" if base else Path.home() / ".cache" / "scalpel"
    return root / "covariance"


@dataclass(frozen=True)
class KeyCovariance:
    """A key covariance and what it was computed from: :func:`editors.rome.compute_rome` refuses
    one made for other weights or another layer."""

    matrix: torch.Tensor
    n_tokens: int
    model_sha256: str
    layer: int
    corpus_sha256: str


class CovarianceCache:
    """Key covariances on disk, named by SHA-256 of (model weights hash, layer, corpus hash)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    @staticmethod
    def key(model_sha256: str, layer: int, corpus_hash: str) -> str:
        return hashlib.sha256(f"rome-key-covariance/v1|{model_sha256}|{layer}|{corpus_hash}".encode()).hexdigest()

    def get_or_compute(
        self,
        surgeon: Surgeon,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        layer: int,
        progress: Progress | None = None,
    ) -> KeyCovariance:
        texts = list(texts)
        corpus = corpus_sha256(texts)
        key = self.key(surgeon.weights_sha256, layer, corpus)
        path = self.directory / f"{key}.safetensors"
        if path.exists():
            with safe_open(str(path), "pt") as handle:
                n_tokens = int(handle.metadata().get("n_tokens", 0))
            return KeyCovariance(load_file(str(path))["covariance"], n_tokens, surgeon.weights_sha256, layer, corpus)
        covariance, n_tokens = key_covariance(surgeon, tokenizer, texts, layer, progress=progress)
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file({"covariance": covariance.contiguous()}, str(partial), metadata={"n_tokens": str(n_tokens)})
        partial.replace(path)  # atomic: a reader never sees half a file
        return KeyCovariance(covariance, n_tokens, surgeon.weights_sha256, layer, corpus)
