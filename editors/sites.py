"""TransformerLens-style site names.

Activation sites (where activation edits act and what ``Surgeon.trace`` can record):

- ``blocks.{L}.hook_resid_pre`` / ``hook_resid_mid`` / ``hook_resid_post``: the residual
  stream before the block, between attention and MLP, and after the block;
- ``blocks.{L}.hook_attn_out`` / ``hook_mlp_out``: what the attention block and the MLP add to
  the residual stream;
- ``blocks.{L}.attn.hook_z``: per-head attention outputs before the output projection,
  shape ``[batch, pos, n_heads, d_head]``;
- ``blocks.{L}.mlp.hook_post``: MLP neuron activations (input of the MLP output projection).

Weight sites (linear modules that ``low_rank`` edits act on): ``blocks.{L}.attn.W_O``,
``blocks.{L}.mlp.W_in``, ``blocks.{L}.mlp.W_out``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from editors.errors import InvalidEditError

RESIDUAL_POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
OUTPUT_POINTS = ("hook_attn_out", "hook_mlp_out")
ACTIVATION_POINTS = (*RESIDUAL_POINTS, *OUTPUT_POINTS, "attn.hook_z", "mlp.hook_post")
WEIGHT_POINTS = ("attn.W_O", "mlp.W_in", "mlp.W_out")

#: Layer numbers are ASCII digits without leading zeros, so each site has exactly one name (and an
#: edit one identity): ``blocks.01.…`` and ``blocks.١.…`` are not ``blocks.1.…``.
_SITE = re.compile(r"blocks\.(0|[1-9][0-9]*)\.(.+)", re.ASCII)


@dataclass(frozen=True, order=True)
class Site:
    """A parsed site name: layer index and point within the block."""

    layer: int
    point: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.point}"

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
        allowed = "blocks.{L}." + "|".join(points)
        if not isinstance(name, str):
            raise InvalidEditError(field, f"expected a site name string, got {type(name).__name__}", allowed)
        match = _SITE.fullmatch(name)
        if match is None or match.group(2) not in points:
            raise InvalidEditError(field, f"unknown site {name!r}", allowed)
        return cls(int(match.group(1)), match.group(2))
