"""Named position sets: where an edit that takes ``positions`` may act, by what a token is rather
than where it stands (issue 34).

``positions`` is either absolute position ids (a list of integers) or one of:

- ``"image"``: every image token of a vision-language model's prompt;
- ``"image[r0:r1,c0:c1]"``: the image tokens of a box of patch rows ``r0..r1-1`` and columns
  ``c0..c1-1`` (of every image of the row);
- ``"text"``: every token that is not an image token (every token of a text model);
- ``"last"``: the last position of each forward (the prompt's last token, then each generated
  token; rows are left-padded, as the engine pads them).

Sets resolve per row from the forward's input ids, so padding and the text around an image
never move them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from editors.adapters import ModelDims
from editors.errors import InvalidEditError
from editors.validation import check_indices

POSITION_SETS = ("image", "text", "last", "image[r0:r1,c0:c1]")
_REGION = re.compile(r"image\[(0|[1-9][0-9]?):([1-9][0-9]?),(0|[1-9][0-9]?):([1-9][0-9]?)\]", re.ASCII)


@dataclass(frozen=True)
class PositionSet:
    """A parsed position set: ``name`` (``image``, ``text``, ``last`` or ``region``) and a region's box."""

    name: str
    box: tuple[int, int, int, int] | None = None  # rows r0:r1, columns c0:c1

    @classmethod
    def parse(cls, field: str, text: str) -> PositionSet:
        if text in ("image", "text", "last"):
            return cls(text)
        match = _REGION.fullmatch(text)
        if match is None:
            raise InvalidEditError(
                field, f"unknown position set {text!r}", "position ids or " + " | ".join(POSITION_SETS)
            )
        top, bottom, left, right = (int(g) for g in match.groups())
        if not (top < bottom and left < right):
            raise InvalidEditError(field, f"{text!r} is an empty box", "r0 < r1 and c0 < c1")
        return cls("region", (top, bottom, left, right))

    def validate_for(self, field: str, dims: ModelDims) -> None:
        if self.name in ("image", "region") and dims.image_token_id < 0:
            raise InvalidEditError(field, f"{self.name} positions need a vision-language model", "text | last")
        if self.box is not None and max(self.box[1], self.box[3]) > dims.image_grid:
            raise InvalidEditError(field, f"box {self.box} leaves the {dims.image_grid}-patch grid", "a box inside it")

    def mask(self, tokens: torch.Tensor, dims: ModelDims) -> torch.Tensor:
        """``[batch, seq]``: True at the positions of ``tokens`` in this set."""
        is_image = tokens == dims.image_token_id
        if self.name == "text":
            return ~is_image
        if self.name == "last":
            last = torch.zeros_like(is_image)
            last[:, -1] = True
            return last
        if self.box is None:
            return is_image
        top, bottom, left, right = self.box
        patch, _ = image_token_index(tokens, dims.image_token_id, dims.image_grid)
        row, column = patch // dims.image_grid, patch % dims.image_grid
        return is_image & (row >= top) & (row < bottom) & (column >= left) & (column < right)


def image_token_index(tokens: torch.Tensor, image_token_id: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(patch, image)`` for every position of ``tokens`` ``[batch, seq]``: the patch index (row
    major) and the image number within its row of each image token, ``-1`` at other tokens."""
    is_image = tokens == image_token_id
    order = is_image.long().cumsum(dim=1) - 1  # the k-th image token of its row
    per_image = grid * grid
    patch = torch.where(is_image, order % per_image, -1)
    image = torch.where(is_image, order // per_image, -1)
    return patch, image


def check_positions(field: str, value: object) -> tuple[int, ...] | str:
    """``positions`` as an edit stores it: sorted distinct position ids, or a position set's name."""
    if isinstance(value, str):
        PositionSet.parse(field, value)
        return value
    return check_indices(field, value)
