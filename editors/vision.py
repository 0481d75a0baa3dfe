"""Surgery on a vision-language model's image tokens (issue 34), in the kit.

A LLaVA model reads each image as ``image_grid²`` image tokens: the projector's outputs, put in
place of the ``<image>`` placeholders of the prompt, one per patch, row by row. This module names
them and cuts at them:

- :func:`image_token_index` finds each token's image and patch from the input ids alone, so left
  padding, text between images and several images per prompt never shift a patch;
- :class:`ImageTokenAblation` (edit kind ``image_token_ablation``) replaces image tokens (all of
  them, or a region's patches) at the language model's input with the mean image token (Neo et
  al. 2025's mean ablation) or zero; per row in the batched engine, like every kind;
- :func:`region_patches` maps a box of patch rows and columns to patch indices;
- :func:`mean_image_token` is the mean of the projector's outputs over a set of images;
- :func:`attention_knockout` blocks attention from chosen query positions to image tokens at
  chosen layers (Geva et al. 2023's knockout), for one forward;
- :func:`image_logit_lens` decodes every image token at every layer through the final norm and
  the unembedding;
- :func:`image_attribution` is attribution patching over image tokens and vision heads;
- :func:`trace_image_region` is causal tracing over a region of the picture: the region's image
  tokens noised, each (layer, position) state restored in turn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from editors.adapters import ModelDims, module_at
from editors.edits import Edit, Op
from editors.errors import InvalidEditError
from editors.locate import _grad_recorder
from editors.patching import answer_probability, patch_grid
from editors.position_sets import PositionSet, image_token_index
from editors.sites import Site
from editors.validation import check_choice, check_indices, check_int, check_tensor

IMAGE_ABLATION_MODES = ("mean", "zero")
QUERY_SETS = ("last", "text", "image", "all")


def region_patches(rows: tuple[int, int], columns: tuple[int, int], grid: int) -> tuple[int, ...]:
    """The patch indices of the box ``rows`` × ``columns`` (inclusive start, exclusive end) of a
    ``grid`` × ``grid`` patch grid."""
    (top, bottom), (left, right) = rows, columns
    if not (0 <= top < bottom <= grid and 0 <= left < right <= grid):
        raise InvalidEditError("region", f"rows {rows} × columns {columns} is not a box of the grid", f"0..{grid}")
    return tuple(r * grid + c for r in range(top, bottom) for c in range(left, right))


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class ImageTokenAblation(Edit):
    """Replace image tokens at the language model's input (``blocks.0.hook_resid_pre``).

    ``patches`` are patch indices within an image (row major; ``None``: every patch); ``images``
    which images of a prompt (``None``: every one). ``mode="mean"`` writes ``mean`` (the mean
    image token, :func:`mean_image_token`), ``"zero"`` writes zeros. Positions come from the
    input ids, so the same patch is cut whatever the padding or the text around it; a forward
    without image tokens (a decode step) is untouched.
    """

    kind: ClassVar[str] = "image_token_ablation"
    tensor_fields: ClassVar[tuple[str, ...]] = ("mean",)
    optional_fields: ClassVar[tuple[str, ...]] = ("patches", "images")

    mode: str = "mean"
    mean: torch.Tensor | None = None
    patches: tuple[int, ...] | None = None
    images: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, IMAGE_ABLATION_MODES)
        if (self.mode == "mean") != (self.mean is not None):
            raise InvalidEditError(
                "mean", "is needed by mode 'mean' and by no other", "a [d_model] tensor with mode mean"
            )
        if self.mean is not None:
            object.__setattr__(self, "mean", check_tensor("mean", self.mean, 1))
        for name in ("patches", "images"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_indices(name, value))

    def validate_for(self, dims: ModelDims) -> None:
        if dims.image_token_id < 0:
            raise InvalidEditError("kind", "image_token_ablation needs a vision-language model", "a LLaVA model")
        if self.mean is not None and self.mean.shape[0] != dims.d_model:
            raise InvalidEditError("mean", f"length {self.mean.shape[0]} != d_model", f"d_model = {dims.d_model}")
        for i, patch in enumerate(self.patches or ()):
            check_int(f"patches[{i}]", patch, 0, dims.image_grid**2 - 1)

    def compile(self, dims: ModelDims, device: torch.device, dtype: torch.dtype) -> list[tuple[Site, Op]]:
        zero = torch.zeros(dims.d_model, device=device, dtype=dtype)
        value = zero if self.mean is None else self.mean.to(device, dtype)
        patches = None if self.patches is None else torch.tensor(self.patches, device=device)
        images = None if self.images is None else torch.tensor(self.images, device=device)
        token_id, grid = dims.image_token_id, dims.image_grid

        def fn(x: torch.Tensor, positions: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
            patch, image = image_token_index(tokens, token_id, grid)
            cut = patch >= 0
            if patches is not None:
                cut &= torch.isin(patch, patches)
            if images is not None:
                cut &= torch.isin(image, images)
            return torch.where(cut.unsqueeze(-1), value, x)

        return [(Site(0, "hook_resid_pre"), Op(fn, needs_tokens=True))]


@torch.inference_mode()
def mean_image_token(surgeon: Any, pixel_values: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The mean of the projector's outputs (``hook_image_embeds``) over ``pixel_values``'s images
    and all their patches: ``[d_model]``, float32 (the value Neo et al. 2025 ablate with)."""
    device, dtype = surgeon.device_dtype
    parts = []
    with surgeon.trace(["hook_image_embeds"]) as cache:
        for start in range(0, pixel_values.shape[0], batch):
            surgeon.model.model.get_image_features(pixel_values=pixel_values[start : start + batch].to(device, dtype))
            parts.append(cache["hook_image_embeds"].float().flatten(0, -2))
    return torch.cat(parts).mean(dim=0)


@contextmanager
def attention_knockout(
    surgeon: Any,
    tokens: torch.Tensor,
    layers: Sequence[int],
    queries: str = "last",
    patches: Sequence[int] | None = None,
) -> Iterator[None]:
    """In the body's forwards over ``tokens`` (``[batch, seq]``, no KV cache), positions in
    ``queries`` (``last``: the final position; ``text``, ``image`` or ``all``) cannot attend to
    the image tokens (or only those of ``patches``) at the language model's ``layers``."""
    check_choice("queries", queries, QUERY_SETS)
    dims: ModelDims = surgeon.dims
    if dims.image_token_id < 0:
        raise InvalidEditError("model", "attention knockout of image tokens needs a vision-language model", "LLaVA")
    for i, layer in enumerate(layers):
        check_int(f"layers[{i}]", layer, 0, dims.n_layers - 1)
    for i, chosen in enumerate(patches or ()):
        check_int(f"patches[{i}]", chosen, 0, dims.image_grid**2 - 1)
    patch, _ = image_token_index(tokens, dims.image_token_id, dims.image_grid)
    keys = patch >= 0 if patches is None else torch.isin(patch, torch.tensor(list(patches), device=patch.device))
    query = torch.ones_like(keys) if queries == "all" else PositionSet(queries).mask(tokens, dims)
    blocked = (query.unsqueeze(2) & keys.unsqueeze(1)).unsqueeze(1)  # [batch, 1, q, k]
    seq = tokens.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril()

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        mask = kwargs.get("attention_mask")
        if mask is None:
            allowed = causal.expand(tokens.shape[0], 1, seq, seq)
        elif mask.dtype == torch.bool:
            allowed = mask
        else:
            allowed = mask == 0
        if allowed.shape[-2:] != (seq, seq):
            raise InvalidEditError("tokens", "the forward is not the one the knockout was set up for", "its tokens")
        return args, {**kwargs, "attention_mask": allowed & ~blocked}

    adapter = surgeon.adapter
    handles = [
        module_at(adapter.blocks(surgeon.model)[layer], adapter.attn).register_forward_pre_hook(hook, with_kwargs=True)
        for layer in layers
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def image_logit_lens(surgeon: Any, inputs: dict[str, torch.Tensor], top_k: int = 5) -> torch.Tensor:
    """The ``top_k`` vocabulary ids that each image token of ``inputs``'s first row decodes to
    after each language-model layer (final norm, then the unembedding): ``[layers, patches, top_k]``."""
    dims: ModelDims = surgeon.dims
    sites = [f"blocks.{layer}.hook_resid_post" for layer in range(dims.n_layers)]
    with surgeon.trace(sites) as cache:
        surgeon.model(**inputs)
    patch, _ = image_token_index(inputs["input_ids"][:1], dims.image_token_id, dims.image_grid)
    where = (patch[0] >= 0).nonzero().squeeze(-1)[: dims.image_grid**2]
    norm = module_at(surgeon.model, surgeon.adapter.final_norm)
    unembed = surgeon.model.get_output_embeddings()
    return torch.stack([unembed(norm(cache[site][0, where])).topk(top_k, dim=-1).indices for site in sites])


@dataclass(frozen=True)
class ImageRegionTrace:
    """Result of :func:`trace_image_region`: the answer's probability with each state restored."""

    positions: tuple[int, ...]  # the noised image tokens' positions in the prompt
    clean_probability: float
    corrupted_probability: float
    grids: dict[str, torch.Tensor]  # kind → [n_layers, prompt length]


def trace_image_region(
    surgeon: Any,
    inputs: dict[str, torch.Tensor],
    patches: Sequence[int],
    answer_id: int,
    samples: int = 10,
    noise_scale: float | None = None,
    seed: int = 0,
    kinds: Sequence[str] = ("resid", "attn", "mlp"),
) -> ImageRegionTrace:
    """Causal tracing over image tokens (Meng et al.'s method, a region of the picture as the
    subject): ``inputs`` is one prompt with its picture (``input_ids``, ``pixel_values``); the
    image tokens of ``patches`` get Gaussian noise at the language model's input (``noise_scale``
    defaults to three times the image tokens' standard deviation), and each (layer, position)
    state of each kind is restored from the clean run in turn; the grids hold ``answer_id``'s
    probability at the last position."""
    dims: ModelDims = surgeon.dims
    if inputs["input_ids"].shape[0] != 1:
        raise InvalidEditError("inputs", "holds several prompts", "one prompt with its picture")
    for i, patch in enumerate(patches):
        check_int(f"patches[{i}]", patch, 0, dims.image_grid**2 - 1)
    check_int("samples", samples, 1, 1000)
    patch, _ = image_token_index(inputs["input_ids"], dims.image_token_id, dims.image_grid)
    where = torch.isin(patch[0], torch.tensor(list(patches), device=patch.device)).nonzero().flatten()
    if where.numel() == 0:
        raise InvalidEditError("inputs", "has no image tokens", "a prompt with its picture")
    with torch.inference_mode(), surgeon.trace(["blocks.0.hook_resid_pre"]) as cache:
        surgeon.model(**inputs)
    clean = cache["blocks.0.hook_resid_pre"]  # the prompt's embeddings, image tokens in place
    image = clean[0, patch[0] >= 0]
    scale = noise_scale if noise_scale is not None else 3 * image.float().std().item()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples, where.numel(), clean.shape[-1], generator=generator) * scale
    corrupted = clean.repeat(samples, 1, 1)
    corrupted[:, where] += noise.to(corrupted.device, corrupted.dtype)
    grids, clean_p, corrupted_p = patch_grid(
        surgeon, clean, corrupted, answer_probability(answer_id), kinds, show_progress=False
    )
    return ImageRegionTrace(tuple(where.tolist()), clean_p, corrupted_p, grids)


@dataclass(frozen=True)
class ImageAttribution:
    """Result of :func:`image_attribution`: attribution-patching estimates of how much the metric
    moves from the corrupted picture toward the clean one when a component is restored."""

    patches: torch.Tensor  # [grid²]: each image token at the language model's input
    vision_heads: torch.Tensor  # [vision layers, vision heads]: each head's output, over every position
    clean_metric: float
    corrupted_metric: float


def image_attribution(
    surgeon: Any,
    clean: dict[str, torch.Tensor],
    corrupted: dict[str, torch.Tensor],
    metric: Any,
    steps: int = 8,
) -> ImageAttribution:
    """Attribution patching over a VLM's image tokens and its vision encoder's heads, with
    integrated gradients along the path between the two pictures (as EAP-IG, Hanna et al. 2024):
    ``metric(last-position logits)`` (a scalar per row) is differentiated at ``steps`` points from
    the corrupted picture toward the clean one, and each component's estimate is its clean minus
    corrupted activation times the mean gradient, summed over its positions. ``steps=1`` is plain
    attribution patching at the corrupted run (Nanda 2023), which a large change defeats: on the
    toy VLM it gives the object's token the wrong sign. ``clean`` and ``corrupted`` are the same
    prompt (one row) with two pictures (``input_ids``, ``pixel_values``)."""
    dims: ModelDims = surgeon.dims
    check_int("steps", steps, 1, 64)
    for name, inputs in (("clean", clean), ("corrupted", corrupted)):
        if inputs["input_ids"].shape[0] != 1 or "pixel_values" not in inputs:
            raise InvalidEditError(name, "is not one prompt with its picture", "input_ids [1, P] and pixel_values")
    if not torch.equal(clean["input_ids"], corrupted["input_ids"]):
        raise InvalidEditError("corrupted", "has other tokens than clean", "the same prompt, another picture")
    vision_layers = dims.towers[0][1].n_layers if dims.towers else 0
    sites = ["blocks.0.hook_resid_pre", *(f"vision.blocks.{layer}.attn.hook_z" for layer in range(vision_layers))]
    with torch.inference_mode(), surgeon.trace(sites) as cache:
        clean_metric = float(metric(surgeon.model(**clean).logits[:, -1]).sum())
    clean_acts = {site: cache[site].clone() for site in sites}
    grads: dict[str, torch.Tensor] = {}
    for k in range(steps):  # step 0 is the corrupted run itself: its activations and metric too
        pixels = torch.lerp(corrupted["pixel_values"], clean["pixel_values"], k / steps)
        recorded: dict[str, torch.Tensor] = {}
        recorders = [(site, _grad_recorder(recorded, site)) for site in sites]
        with torch.enable_grad(), surgeon.apply(surgeon.compile([], extra_ops=recorders)):
            value = metric(surgeon.model(input_ids=corrupted["input_ids"], pixel_values=pixels).logits[:, -1]).sum()
            step = torch.autograd.grad(value, [recorded[site] for site in sites])
        if k == 0:
            corrupted_metric = float(value.detach())
            corrupted_acts = {site: recorded[site].detach() for site in sites}
        for site, grad in zip(sites, step, strict=True):
            grads[site] = grads.get(site, 0) + grad.float() / steps
    estimates = {site: (clean_acts[site] - corrupted_acts[site]).float() * grads[site] for site in sites}
    patch, _ = image_token_index(clean["input_ids"], dims.image_token_id, dims.image_grid)
    at_input = estimates["blocks.0.hook_resid_pre"][0].sum(dim=-1)
    per_patch = torch.zeros(dims.image_grid**2, dtype=at_input.dtype, device=at_input.device)
    per_patch.index_add_(0, patch[0][patch[0] >= 0], at_input[patch[0] >= 0])
    heads = [estimates[site][0].sum(dim=(0, 2)) for site in sites[1:]]  # [heads] each
    return ImageAttribution(
        per_patch.cpu(), torch.stack(heads).cpu() if heads else torch.zeros(0), clean_metric, corrupted_metric
    )
