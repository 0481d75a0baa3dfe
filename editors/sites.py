"""TransformerLens-style site names.

Activation sites (where activation edits act and what ``Surgeon.trace`` can record):

- ``blocks.{L}.hook_resid_pre`` / ``hook_resid_mid`` / ``hook_resid_post``: the residual
  stream before the block, between attention and MLP, and after the block;
- ``blocks.{L}.hook_attn_out`` / ``hook_mlp_out``: what the attention block and the MLP add to
  the residual stream;
- ``blocks.{L}.attn.hook_z``: per-head attention outputs before the output projection,
  shape ``[batch, pos, n_heads, d_head]``;
- ``blocks.{L}.mlp.hook_post``: MLP neuron activations (input of the MLP output projection);
- ``blocks.{L}.attn.hook_q`` / ``hook_k`` / ``hook_v``: the attention's queries, keys and values
  per head, ``[batch, pos, heads, d_head]`` (keys and values have the key-value heads of a
  grouped-query model), before rotary embeddings, where the adapter names the projections;
- model-wide: ``hook_embed`` (the token embeddings) and ``ln_final.hook_normalized`` (the final
  norm's output, what the unembedding reads); in a vision-language model ``hook_image_embeds``
  (the projector's output: the image tokens as the language model receives them, ``[images,
  patches, d_model]``, one row per image whatever the text around it).

A vision-language model's vision encoder has its own blocks, named under ``vision.``:
``vision.blocks.{L}.hook_resid_post``, ``vision.blocks.{L}.attn.hook_z``, … (every block point
above; its positions are the encoder's: the class token first, then the patches row by row).

Weight sites (linear modules that ``low_rank`` edits act on): ``blocks.{L}.attn.W_O``,
``blocks.{L}.mlp.W_in``, ``blocks.{L}.mlp.W_out``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from editors.errors import InvalidEditError

RESIDUAL_POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
OUTPUT_POINTS = ("hook_attn_out", "hook_mlp_out")
QKV_POINTS = ("attn.hook_q", "attn.hook_k", "attn.hook_v")
#: Sites of the whole model, named without a block (their ``Site.layer`` is -1).
MODEL_POINTS = ("hook_embed", "ln_final.hook_normalized", "hook_image_embeds")
#: The towers a model's blocks may belong to besides the language model's (named ``""``).
TOWERS = ("vision",)
ACTIVATION_POINTS = (*RESIDUAL_POINTS, *OUTPUT_POINTS, "attn.hook_z", "mlp.hook_post", *QKV_POINTS, *MODEL_POINTS)
WEIGHT_POINTS = ("attn.W_O", "mlp.W_in", "mlp.W_out")

#: Layer numbers are ASCII digits without leading zeros, so each site has exactly one name (and an
#: edit one identity): ``blocks.01.…`` and ``blocks.١.…`` are not ``blocks.1.…``.
_SITE = re.compile(r"(?:(vision)\.)?blocks\.(0|[1-9][0-9]*)\.(.+)", re.ASCII)


@dataclass(frozen=True, order=True)
class Site:
    """A parsed site name: layer index and point within the block, and the tower the block is in
    (``""``: the language model; ``"vision"``: a vision-language model's vision encoder)."""

    layer: int
    point: str
    tower: str = ""

    @property
    def name(self) -> str:
        if self.point in MODEL_POINTS:
            return self.point
        return f"{self.tower}.blocks.{self.layer}.{self.point}" if self.tower else f"blocks.{self.layer}.{self.point}"

    @property
    def is_residual(self) -> bool:
        return self.point in RESIDUAL_POINTS

    @property
    def is_weight(self) -> bool:
        return self.point in WEIGHT_POINTS

    @classmethod
    def parse(
        cls, name: object, field: str = "site", points: tuple[str, ...] = ACTIVATION_POINTS + WEIGHT_POINTS
    ) -> Site:
        """Parse ``name``; raise :class:`InvalidEditError` naming ``field`` if it is not one of ``points``."""
        block_points = [p for p in points if p not in MODEL_POINTS]
        allowed = (
            "[vision.]blocks.{L}." + "|".join(block_points) + "".join(f" or {p}" for p in points if p in MODEL_POINTS)
        )
        if not isinstance(name, str):
            raise InvalidEditError(field, f"expected a site name string, got {type(name).__name__}", allowed)
        if name in MODEL_POINTS and name in points:
            return cls(-1, name)
        match = _SITE.fullmatch(name)
        if match is None or match.group(3) not in points or match.group(3) in MODEL_POINTS:
            raise InvalidEditError(field, f"unknown site {name!r}", allowed)
        return cls(int(match.group(2)), match.group(3), match.group(1) or "")
