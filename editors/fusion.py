"""Per-row stacks at one site as one op over the whole batch.

Where every stack that acts at a site does so with one op of the same plain form (steering's
add, a zero ablation, a low-rank weight delta, a ReLU or JumpReLU SAE's feature edit), the rows
need not be gathered, edited and scattered back stack by stack: a per-row table does it in one
step, zero for rows whose stack leaves the site alone. On a GPU, where a small batch's decode
step is bound by kernel launches, that is the difference between one launch and three or more
per stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editors.edits import AddLowRank, AddVector, Op, ZeroUnits, add_product
from editors.feature_edits import EditFeatures, feature_change


def fused_op(ops: Sequence[Op], rows: Sequence[torch.Tensor], batch: int) -> Op | None:
    """One op doing ``ops[i]`` on the batch rows ``rows[i]`` and nothing elsewhere, or None when
    the ops do not share a plain form."""
    forms = [op.form for op in ops]
    kinds = {type(form) for form in forms}
    if len(kinds) != 1 or forms[0] is None:
        return None
    if isinstance(forms[0], AddVector):
        return _add_vectors(forms, rows, batch)  # type: ignore[arg-type]
    if isinstance(forms[0], ZeroUnits):
        return _zero_units(forms, rows, batch)  # type: ignore[arg-type]
    if isinstance(forms[0], EditFeatures):
        return _edit_features(forms, rows, batch)  # type: ignore[arg-type]
    return _add_low_ranks(forms, rows, batch)  # type: ignore[arg-type]


def _add_vectors(forms: Sequence[AddVector], rows: Sequence[torch.Tensor], batch: int) -> Op:
    first = forms[0].delta
    table = first.new_zeros(batch, first.shape[-1])
    for form, where in zip(forms, rows, strict=True):
        table[where] = form.delta
    if all(form.positions is None for form in forms):

        def everywhere(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
            return x + table.view(batch, *([1] * (x.dim() - 2)), table.shape[-1])

        return Op(everywhere)
    # gain[row, p]: 1 where the row's vector is added at position p, 0 elsewhere; the last column
    # stands for every position past the last one named (1 for rows whose vector goes everywhere)
    last = max(form.last for form in forms if form.positions is not None) + 1
    gain = table.new_zeros(batch, last + 1)
    for form, where in zip(forms, rows, strict=True):
        if form.positions is None:
            gain[where] = 1
        else:
            gain[where.unsqueeze(1), form.positions] = 1

    def at_positions(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        hit = gain.gather(1, positions.expand(batch, -1).clamp(max=last))  # [batch, seq]: 0 or 1
        return torch.addcmul(x, hit.unsqueeze(-1), table.unsqueeze(1))  # x + 1·vector, or x + 0 (x itself)

    return Op(at_positions, needs_positions=True)


def _zero_units(forms: Sequence[ZeroUnits], rows: Sequence[torch.Tensor], batch: int) -> Op | None:
    dim, count = forms[0].dim, forms[0].count
    if any(form.dim != dim or form.count != count for form in forms):
        return None
    mask = torch.zeros(batch, count, dtype=torch.bool, device=forms[0].index.device)
    for form, where in zip(forms, rows, strict=True):
        mask[where.unsqueeze(1), form.index.unsqueeze(0)] = True

    def fn(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        shape = (batch, *([1] * (dim - 1)), count, *([1] * (x.dim() - dim - 1)))
        return x.masked_fill(mask.view(shape), 0.0)

    return Op(fn)


def _add_low_ranks(forms: Sequence[AddLowRank], rows: Sequence[torch.Tensor], batch: int) -> Op:
    """The factors side by side (``[d, Σ rank]``) and a per-row mask over their columns: two dense
    matmuls for every row, each row's product through its own columns only."""
    U = torch.cat([form.U for form in forms], dim=1)
    V = torch.cat([form.V for form in forms], dim=1)
    mask = U.new_zeros(batch, U.shape[1])
    start = 0
    for form, where in zip(forms, rows, strict=True):
        rank = form.U.shape[1]
        mask[where, start : start + rank] = 1
        start += rank
    Ut = U.T

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        columns = x @ V
        return add_product(y, columns * mask.view(batch, *([1] * (columns.dim() - 2)), mask.shape[1]), Ut)

    return Op(fn)


def _edit_features(forms: Sequence[EditFeatures], rows: Sequence[torch.Tensor], batch: int) -> Op | None:
    """Every feature edit's features side by side and a per-row mask over them: the encoder and
    decoder matmuls once for the batch, each row changed only by its own edit's features. TopK
    edits fuse only over one SAE (one encoder pass, its top-k read per feature)."""
    top_k = {(form.top_k, form.sae if form.top_k is not None else "") for form in forms}
    if len(top_k) != 1:
        return None
    shared = forms[0].top_k is not None
    axes = _FEATURE_AXES[2:] if shared else _FEATURE_AXES
    parts = {name: torch.cat([getattr(form, name) for form in forms], dim=dim) for name, dim in axes}
    if shared:
        parts |= {"encoder": forms[0].encoder, "bias": forms[0].bias}
        parts |= {"index": torch.cat([form.index for form in forms]), "top_k": forms[0].top_k, "sae": forms[0].sae}
    joined = EditFeatures(**parts)
    mask = joined.decoder.new_zeros(batch, joined.decoder.shape[0])
    start = 0
    for form, where in zip(forms, rows, strict=True):
        width = form.decoder.shape[0]
        mask[where, start : start + width] = 1
        start += width
    return Op(feature_change(joined, mask))


#: EditFeatures' per-feature fields and the axis their features run along (the first two are the
#: encoder's, which TopK edits of one SAE share instead)
_FEATURE_AXES = (
    ("encoder", 1),
    ("bias", 0),
    ("threshold", 0),
    ("decoder", 0),
    ("scale", 0),
    ("value", 0),
    ("clamp", 0),
)
