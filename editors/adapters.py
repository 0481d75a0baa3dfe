"""Architecture adapters: where each site lives in a ``transformers`` model.

An adapter names, per architecture family, the decoder blocks and the few modules inside a
block that the hook dispatcher needs. The dispatcher then realises every site with hooks on
those modules:

- ``hook_resid_pre``: forward pre-hook on the block (its hidden-states input);
- ``hook_resid_post``: forward hook on the block (its output);
- ``hook_resid_mid``: forward pre-hook on the MLP's input norm, whose input *is* the residual
  after attention; a change ``δ`` made there is also added to the MLP's output so that the
  residual carried on equals ``resid_mid + δ + mlp(...)`` exactly;
- ``hook_attn_out`` / ``hook_mlp_out``: forward hook on the attention module / the MLP;
- ``attn.hook_z``: forward pre-hook on the attention output projection, viewed per head;
- ``mlp.hook_post``: forward pre-hook on the MLP output projection;
- ``attn.hook_q`` / ``hook_k`` / ``hook_v``: forward hook on the query / key / value
  projections (``qkv``: three modules, or one fused module whose output layout is ``qkv_layout``:
  GPT-2's ``q|k|v`` blocks, or GPT-NeoX's per-head ``q|k|v``), viewed per head;
- ``hook_embed``: forward hook on the input embeddings; ``ln_final.hook_normalized``: forward
  hook on the final norm (``final_norm``);
- weight sites: forward hook on the linear module itself.

An adapter without ``qkv`` or ``final_norm`` simply lacks those sites (naming one is an error that
says so).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from editors.errors import InvalidEditError, UnsupportedArchitectureError
from editors.sites import RESIDUAL_POINTS, Site


@dataclass(frozen=True)
class ModelDims:
    """The shape facts that edits are validated against."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    parallel_residual: bool = False
    #: the other towers' dims (a vision-language model's vision encoder: ``(("vision", dims),)``)
    towers: tuple[tuple[str, ModelDims], ...] = ()
    image_token_id: int = -1  # the input id of an image token (-1: not a vision-language model)
    image_grid: int = 0  # image tokens per row (and per column) of one image's patch grid

    def at(self, site: Site) -> ModelDims:
        """The dims of the tower ``site`` is in (these, for the language model's sites)."""
        if not site.tower:
            return self
        towers = dict(self.towers)
        if site.tower not in towers:
            raise InvalidEditError("site", f"{site.name}: this model has no {site.tower} tower", "its own sites")
        return towers[site.tower]

    def residual_points(self) -> tuple[str, ...]:
        """Residual sites this model has (a parallel-attention block has no ``resid_mid``)."""
        if self.parallel_residual:
            return tuple(p for p in RESIDUAL_POINTS if p != "hook_resid_mid")
        return RESIDUAL_POINTS


def module_at(root: nn.Module, dotted: str) -> nn.Module:
    """``root``'s submodule at the dotted path ``dotted``."""
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = module.weight  # GPT-2 Conv1D stores [d_in, d_out]
    return int(weight.shape[0]), int(weight.shape[1])


def weight_delta_as_stored(module: nn.Module, delta: torch.Tensor) -> torch.Tensor:
    """``delta`` given as ``[d_out, d_in]`` (torch Linear convention) in the module's own layout."""
    return delta if isinstance(module, nn.Linear) else delta.T


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Attribute paths of one architecture family (relative to the model / to a block)."""

    family: str
    model_types: tuple[str, ...]
    layers: str
    attn_out: str
    mlp_in: str
    mlp_out: str
    mid_norm: str
    mlp: str
    attn: str
    final_norm: str = ""
    qkv: tuple[str, ...] = ()  # q, k, v projections relative to a block; or one fused projection
    qkv_layout: str = "separate"  # separate | gpt2 (q|k|v blocks) | neox (per head q|k|v)
    config: str = ""  # where the tower's config hangs off the model's (a VLM's ``text_config``)
    image_embeds: str = ""  # a VLM's projector, whose output is ``hook_image_embeds``
    #: a VLM's vision encoder, as an adapter of its own (paths from the model's root)
    vision: ArchitectureAdapter | None = None

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return module_at(model, self.layers)

    def module(self, model: nn.Module, layer: int, role: str) -> nn.Module:
        """The block's module in ``role``: ``attn``, ``attn_out``, ``mlp``, ``mlp_in``, ``mlp_out`` or ``mid_norm``."""
        return module_at(self.blocks(model)[layer], getattr(self, role))

    def weight_module(self, model: nn.Module, site: Site) -> nn.Module:
        role = {"attn.W_O": "attn_out", "mlp.W_in": "mlp_in", "mlp.W_out": "mlp_out"}[site.point]
        return self.tower(site.tower).module(model, site.layer, role)

    def tower(self, name: str) -> ArchitectureAdapter:
        """The adapter of the tower ``name`` (``""``: this one)."""
        if not name:
            return self
        if name == "vision" and self.vision is not None:
            return self.vision
        raise InvalidEditError("site", f"this model has no {name} tower", "its language model's sites")

    def dims(self, model: nn.Module) -> ModelDims:
        config = getattr(model.config, self.config) if self.config else model.config
        d_model = int(config.hidden_size)
        n_heads = int(config.num_attention_heads)
        d_head = int(getattr(config, "head_dim", None) or d_model // n_heads)
        d_mlp, _ = linear_shape(self.module(model, 0, "mlp_out"))
        return ModelDims(
            n_layers=len(self.blocks(model)),
            d_model=d_model,
            n_heads=n_heads,
            d_head=d_head,
            d_mlp=d_mlp,
            parallel_residual=bool(getattr(config, "use_parallel_residual", False)),
            towers=(("vision", self.vision.dims(model)),) if self.vision is not None else (),
            **(_image_dims(model.config) if self.image_embeds else {}),
        )


ADAPTERS: tuple[ArchitectureAdapter, ...] = (
    ArchitectureAdapter(
        "gpt2",
        ("gpt2",),
        "transformer.h",
        "attn.c_proj",
        "mlp.c_fc",
        "mlp.c_proj",
        "ln_2",
        "mlp",
        "attn",
        final_norm="transformer.ln_f",
        qkv=("attn.c_attn",),
        qkv_layout="gpt2",
    ),
    ArchitectureAdapter(
        "gpt_neox",
        ("gpt_neox",),
        "gpt_neox.layers",
        "attention.dense",
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
        "post_attention_layernorm",
        "mlp",
        "attention",
        final_norm="gpt_neox.final_layer_norm",
        qkv=("attention.query_key_value",),
        qkv_layout="neox",
    ),
    ArchitectureAdapter(
        "llama",
        ("llama", "mistral", "qwen2"),
        "model.layers",
        "self_attn.o_proj",
        "mlp.up_proj",
        "mlp.down_proj",
        "post_attention_layernorm",
        "mlp",
        "self_attn",
        final_norm="model.norm",
        qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ),
)


def _image_dims(config: object) -> dict[str, object]:
    """A LLaVA config's image facts: its image token id and its patch grid's side."""
    vision = config.vision_config  # type: ignore[attr-defined]
    # CLIP puts a class token first, which the "default" strategy drops; SigLIP has none, so its
    # LLaVAs keep every token ("full"). Either way an image is then its patch grid, nothing more.
    class_token = vision.model_type == "clip_vision_model"
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if class_token != (strategy == "default"):
        raise UnsupportedArchitectureError(
            f"LLaVA with a {vision.model_type} encoder and vision_feature_select_strategy {strategy!r}: "
            "Scalpel maps image tokens to patches where an image is exactly its patch grid "
            "(CLIP with 'default', SigLIP with 'full')"
        )
    token = getattr(config, "image_token_id", None)
    token = getattr(config, "image_token_index", None) if token is None else token
    return {"image_token_id": int(token), "image_grid": vision.image_size // vision.patch_size}


#: A CLIP (or SigLIP) vision encoder inside a LLaVA model: pre-norm blocks, separate q/k/v.
CLIP_VISION = ArchitectureAdapter(
    "clip_vision",
    ("clip_vision_model", "siglip_vision_model"),
    "model.vision_tower.encoder.layers",
    "self_attn.out_proj",
    "mlp.fc1",
    "mlp.fc2",
    "layer_norm2",
    "mlp",
    "self_attn",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    config="vision_config",
)
#: Vision-language families: the language model's adapter, its paths under LLaVA's language model.
VLM_TYPES = ("llava",)


def supported_model_types() -> list[str]:
    return sorted([*(t for adapter in ADAPTERS for t in adapter.model_types), *VLM_TYPES])


def _llava_adapter(model: nn.Module) -> ArchitectureAdapter:
    """LLaVA (``LlavaForConditionalGeneration``): its language model's own adapter with paths under
    ``model.language_model``, the CLIP vision encoder as the ``vision`` tower, and the projector."""
    text_type = model.config.text_config.model_type
    vision_type = model.config.vision_config.model_type
    text = next((a for a in ADAPTERS if text_type in a.model_types), None)
    if text is None or text.family != "llama" or vision_type not in CLIP_VISION.model_types:
        raise UnsupportedArchitectureError(
            f"LLaVA with a {text_type!r} language model and a {vision_type!r} vision encoder: Scalpel's LLaVA "
            "adapter takes a Llama-family language model (llama, mistral, qwen2) "
            "and a CLIP or SigLIP encoder"
        )
    return dataclasses.replace(
        text,
        family="llava",
        model_types=VLM_TYPES,
        layers="model.language_model.layers",
        final_norm="model.language_model.norm",
        config="text_config",
        image_embeds="model.multi_modal_projector",
        vision=CLIP_VISION,
    )


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model`` (a ``transformers`` causal LM or LLaVA), by ``config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in VLM_TYPES:
        return _llava_adapter(model)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedArchitectureError(
        f"no adapter for model_type {model_type!r}; supported: {', '.join(supported_model_types())}. "
        "Another decoder-only family works with an adapter of your own: Surgeon(model, adapter=MyAdapter()), "
        "an ArchitectureAdapter naming its blocks, attention and MLP modules (docs/surgery-kit.md: Other architectures)"
    )
