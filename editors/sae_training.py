"""Training a sparse autoencoder on a hosted model's activations, and the standard SAE metrics.

Activations stream from the model: texts are run a batch at a time, the activations at the site
go into a shuffle buffer of ``buffer_tokens``, and the SAE trains on batches drawn from it, so
memory is bounded by the buffer, not the token budget. The corpus is cycled when the budget is
larger than it. Deterministic for a seed (the corpus order, the buffer's shuffles, the init).

Metrics (:func:`sae_metrics`, on held-out texts): explained variance, L0 (features active per
token), cross-entropy loss recovered (the model's next-token loss with the site replaced by the
SAE's reconstruction, between the zero-ablated site at 0 and the clean model at 1: SAELens's
"CE loss score"), the fraction of features that never fire, and the reconstruction MSE.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from editors.batching import encode_batch
from editors.errors import InvalidEditError
from editors.sae import ARCHITECTURES, SparseAutoencoder
from editors.surgeon import Surgeon
from editors.validation import check_choice, check_int, check_scale

#: ``progress(step, steps, loss)``.
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class SaeTrainConfig:
    """What to train (``site``, width ``d_sae``, ``architecture``) and how."""

    site: str
    d_sae: int
    architecture: str = "topk"
    k: int = 16  # topk: features kept per token
    l1_coefficient: float = 3e-3  # relu: the sparsity penalty on f · |W_dec row|
    tokens: int = 200_000  # the training budget
    batch_tokens: int = 1024  # tokens per optimiser step
    texts_per_forward: int = 64
    buffer_tokens: int = 16_384  # the shuffle buffer: what memory holds of the activations
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("architecture", self.architecture, tuple(a for a in ARCHITECTURES if a != "jumprelu"))
        check_int("d_sae", self.d_sae, 1, 1 << 22)
        check_int("k", self.k, 1, self.d_sae)
        check_int("tokens", self.tokens, 1, 10**10)
        check_int("batch_tokens", self.batch_tokens, 1, 1 << 20)
        check_int("buffer_tokens", self.buffer_tokens, self.batch_tokens, 1 << 26)
        check_int("texts_per_forward", self.texts_per_forward, 1, 1 << 16)
        if check_scale("lr", self.lr) <= 0 or check_scale("l1_coefficient", self.l1_coefficient) < 0:
            raise InvalidEditError("lr", "lr must be positive and l1_coefficient not negative", "lr > 0, l1 >= 0")

    @property
    def steps(self) -> int:
        return -(-self.tokens // self.batch_tokens)


@dataclass(frozen=True)
class TrainedSae:
    sae: SparseAutoencoder
    metrics: dict[str, float]


@torch.inference_mode()
def site_activations(
    surgeon: Surgeon, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], site: str
) -> torch.Tensor:
    """The activations at ``site`` of every real (unpadded) token of ``texts``: ``[tokens, d_model]``."""
    encoded = encode_batch(tokenizer, texts, surgeon.device_dtype[0])
    with surgeon.trace([site]) as cache:
        surgeon.model(**encoded)
    return cache[site][encoded["attention_mask"].bool()].float().cpu()


def activation_batches(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    config: SaeTrainConfig,
) -> Iterator[torch.Tensor]:
    """Shuffled ``[batch_tokens, d_model]`` batches, streamed from the model through the buffer."""
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    buffer: list[torch.Tensor] = []
    held = 0

    def shuffled() -> torch.Tensor:
        pool = torch.cat(buffer)
        return pool[torch.randperm(pool.shape[0], generator=generator)]

    while True:
        order = list(texts)
        rng.shuffle(order)
        for start in range(0, len(order), config.texts_per_forward):
            acts = site_activations(surgeon, tokenizer, order[start : start + config.texts_per_forward], config.site)
            buffer.append(acts)
            held += acts.shape[0]
            if held < config.buffer_tokens:
                continue
            pool = shuffled()
            usable = pool.shape[0] - pool.shape[0] % config.batch_tokens
            yield from pool[:usable].split(config.batch_tokens)
            buffer, held = [pool[usable:]], pool.shape[0] - usable


def _initial_sae(first: torch.Tensor, config: SaeTrainConfig, d_in: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    decoder = torch.randn(config.d_sae, d_in, generator=generator)
    decoder = decoder / decoder.norm(dim=1, keepdim=True)
    return {
        "W_dec": decoder,
        "W_enc": decoder.T.clone(),
        "b_enc": torch.zeros(config.d_sae),
        "b_dec": first.mean(dim=0),  # the data's centre, as SAELens's geometric-median init approximates
    }


def train_sae(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    config: SaeTrainConfig,
    eval_texts: Sequence[str] = (),
    progress: Progress | None = None,
) -> TrainedSae:
    """An SAE trained on ``texts``' activations at ``config.site`` (Adam on reconstruction MSE,
    plus the L1 penalty for ReLU SAEs; decoder rows kept at unit norm), with its metrics on
    ``eval_texts`` (default: the last tenth of ``texts``, which training then leaves out)."""
    site = surgeon.site(config.site, "site")
    if not texts:
        raise InvalidEditError("texts", "is empty", "a corpus of texts")
    if not eval_texts:
        cut = max(1, len(texts) // 10)
        texts, eval_texts = texts[:-cut] or texts, texts[-cut:]
    torch.manual_seed(config.seed)
    sae = fit_sae(activation_batches(surgeon, tokenizer, texts, config), config, site.name, progress)
    provenance = {"corpus_texts": len(texts), **asdict(config)}
    metrics = sae_metrics(surgeon, tokenizer, sae, eval_texts)
    sae = dataclasses.replace(sae, metadata={"training": provenance, "metrics": metrics})
    return TrainedSae(sae, metrics)


def fit_sae(
    batches: Iterator[torch.Tensor], config: SaeTrainConfig, site: str, progress: Progress | None = None
) -> SparseAutoencoder:
    """An SAE fitted to ``config.steps`` batches of ``[batch_tokens, d_in]`` activations (Adam on
    reconstruction MSE, plus the L1 penalty for ReLU SAEs; decoder rows kept at unit norm): the
    loop under :func:`train_sae`, for activations from anywhere (a cache, another trainer's)."""
    first = next(batches)
    weights = {name: torch.nn.Parameter(t) for name, t in _initial_sae(first, config, first.shape[1]).items()}
    optimiser = torch.optim.Adam(weights.values(), lr=config.lr)
    k = config.k if config.architecture == "topk" else None

    batch = first
    for step in range(1, config.steps + 1):
        with torch.enable_grad():
            centred = batch - weights["b_dec"]
            hidden = centred @ weights["W_enc"] + weights["b_enc"]
            if k is not None:
                top = hidden.topk(k, dim=-1)
                features = torch.zeros_like(hidden).scatter(-1, top.indices, torch.relu(top.values))
            else:
                features = torch.relu(hidden)
            reconstruction = features @ weights["W_dec"] + weights["b_dec"]
            loss = (reconstruction - batch).pow(2).sum(dim=-1).mean()
            if k is None:
                loss = loss + config.l1_coefficient * (features * weights["W_dec"].norm(dim=1)).sum(dim=-1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            weights["W_dec"] /= weights["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)
        if progress is not None:
            progress(step, config.steps, loss.item())
        if step < config.steps:
            batch = next(batches)
    trained = {n: w.detach().clone() for n, w in weights.items()}
    return SparseAutoencoder(**trained, site=site, architecture=config.architecture, k=k)


def _next_token_loss(surgeon: Surgeon, encoded: dict[str, torch.Tensor], hooks: list[tuple[str, Any]]) -> float:
    logits = surgeon.run_with_hooks(**encoded, fwd_hooks=hooks).logits[:, :-1].float()
    targets = encoded["input_ids"][:, 1:]
    keep = encoded["attention_mask"][:, 1:].bool() & encoded["attention_mask"][:, :-1].bool()
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return float(losses[keep].mean())


@torch.inference_mode()
def sae_metrics(
    surgeon: Surgeon, tokenizer: PreTrainedTokenizerBase, sae: SparseAutoencoder, texts: Sequence[str]
) -> dict[str, float]:
    """``explained_variance``, ``l0``, ``ce_loss_recovered``, ``dead_fraction`` and ``mse`` of ``sae``
    on ``texts`` (see the module docstring)."""
    acts = site_activations(surgeon, tokenizer, texts, sae.site)
    features = sae.encode(acts)
    error = acts - sae.decode(features)
    explained = 1 - error.pow(2).sum() / (acts - acts.mean(dim=0)).pow(2).sum()
    encoded = encode_batch(tokenizer, texts, surgeon.device_dtype[0])
    clean = _next_token_loss(surgeon, encoded, [])
    spliced = _next_token_loss(surgeon, encoded, [(sae.site, lambda x: sae.decode(sae.encode(x)).to(x.dtype))])
    zeroed = _next_token_loss(surgeon, encoded, [(sae.site, torch.zeros_like)])
    return {
        "explained_variance": round(float(explained), 4),
        "l0": round(float((features > 0).float().sum(dim=-1).mean()), 3),
        "ce_loss_recovered": round((zeroed - spliced) / (zeroed - clean), 4) if zeroed != clean else 1.0,
        "dead_fraction": round(float(((features > 0).sum(dim=0) == 0).float().mean()), 4),
        "mse": round(float(error.pow(2).sum(dim=-1).mean()), 5),
        "ce_loss_clean": round(clean, 4),
        "ce_loss_spliced": round(spliced, 4),
    }
