"""Edits of SAE features (made by :class:`editors.sae.SparseAutoencoder`'s builders).

Each keeps the SAE's error term: with ``f`` the features' activations and ``f'`` their edited
values, the site's activation becomes ``decode(f') + error = x + (f' - f) W_dec``, so only the
edited features move and nothing the SAE fails to reconstruct is lost. That needs only the edited
features' decoder rows and, for ReLU and JumpReLU SAEs, their own encoder columns (one dot
product per feature, no SAE forward); a TopK SAE's edit carries its whole encoder, since whether
a feature is kept depends on every other. Every edit records the SAE it came from (``sae``: its
SHA-256, architecture and width).

* ``feature_ablation``: the features' activations times ``scale`` (0: zero ablation);
* ``feature_clamp``: the features set to ``value`` wherever they fire, or at ``positions``
  (absolute position ids) whether they fire or not;
* ``feature_steering``: ``alpha`` times the sum of the features' decoder directions, everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from editors.adapters import ModelDims
from editors.edits import (
    AddVector,
    Edit,
    Op,
    _check_residual_site,
    _position_mask,
    position_set_op,
    validate_position_set,
)
from editors.errors import InvalidEditError
from editors.position_sets import check_positions
from editors.sites import RESIDUAL_POINTS, Site
from editors.validation import check_indices, check_int, check_scale, check_tensor, freeze_json, thaw_json


@dataclass(frozen=True, eq=False)
class EditFeatures:
    """``fn(x) = x + c(a) W_dec`` over edited features: ``h = x E + bias`` (the input bias folded
    into ``bias``), ``a = relu(h) · [h > threshold]`` (ReLU, JumpReLU: ``E`` holds the features'
    own columns) or the features' values after the SAE's top-k (TopK: ``E`` is the whole encoder
    and ``index`` picks the features), and per feature ``c(a) = (scale - 1) a`` or, where
    ``clamp``, ``value - a`` where it fires. Rows of several such edits fuse into one op: ReLU and
    JumpReLU edits' features side by side; TopK edits of one SAE over its one encoder pass."""

    encoder: torch.Tensor  # [d, n] ([d, d_sae] for TopK)
    bias: torch.Tensor  # [n] ([d_sae] for TopK)
    threshold: torch.Tensor  # [n]
    decoder: torch.Tensor  # [n, d]
    scale: torch.Tensor  # [n]: the ablation's factor (1 where clamped)
    value: torch.Tensor  # [n]: the clamp's value (unused where scaled)
    clamp: torch.Tensor  # [n] bool
    top_k: int | None = None
    index: torch.Tensor | None = None  # TopK: the edited features among the SAE's
    sae: str = ""  # the SAE's identity: TopK rows fuse only over one SAE


def feature_acts(form: EditFeatures, x: torch.Tensor) -> torch.Tensor:
    """The edited features' activations ``[..., n]`` at ``x``."""
    hidden = x @ form.encoder + form.bias
    if form.top_k is None:
        return torch.relu(hidden) * (hidden > form.threshold)
    top = hidden.topk(form.top_k, dim=-1)
    kept = torch.zeros_like(hidden).scatter(-1, top.indices, torch.relu(top.values))
    return kept.index_select(-1, form.index)


def feature_change(form: EditFeatures, mask: torch.Tensor | None = None) -> Any:
    """``fn(x, positions)`` of ``form``; ``mask`` ``[batch, n]`` limits each row to its columns."""

    def fn(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        acts = feature_acts(form, x)
        coefficient = torch.where(
            form.clamp, torch.where(acts > 0, form.value - acts, torch.zeros_like(acts)), (form.scale - 1) * acts
        )
        if mask is not None:
            coefficient = coefficient * mask.view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1])
        return x + coefficient @ form.decoder

    return fn


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class _FeatureEdit(Edit):
    kind: ClassVar[str] = "_feature"
    tensor_fields: ClassVar[tuple[str, ...]] = ("decoder",)
    json_fields: ClassVar[tuple[str, ...]] = ("sae", "provenance")
    optional_fields: ClassVar[tuple[str, ...]] = ("provenance",)

    site: str
    features: tuple[int, ...]
    decoder: torch.Tensor  # [len(features), d_model]: the features' rows of W_dec
    sae: Any  # {sha256, architecture, d_sae[, name]}: the SAE the edit came from
    provenance: Any = None  # how the edit was found (e.g. a feature circuit's discovery)

    def __post_init__(self) -> None:
        Site.parse(self.site, "site", RESIDUAL_POINTS)
        object.__setattr__(self, "provenance", freeze_json("provenance", self.provenance))
        reference = freeze_json("sae", self.sae)
        plain = thaw_json(reference)
        if not isinstance(plain, dict) or not isinstance(plain.get("sha256"), str):
            raise InvalidEditError("sae", "must name the SAE the edit came from", "{sha256, architecture, d_sae}")
        d_sae = check_int("sae.d_sae", plain.get("d_sae"), 1, 1 << 26)
        object.__setattr__(self, "sae", reference)
        features = check_indices("features", self.features, d_sae - 1)
        if features != tuple(self.features):
            raise InvalidEditError(
                "features", f"{list(self.features)} must be distinct and ascending", "sorted indices"
            )
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "decoder", check_tensor("decoder", self.decoder, 2, (len(features), None)))

    @property
    def d_sae(self) -> int:
        return int(thaw_json(self.sae)["d_sae"])

    @property
    def parsed_site(self) -> Site:
        return Site.parse(self.site, "site", RESIDUAL_POINTS)

    def validate_for(self, dims: ModelDims) -> None:
        _check_residual_site("site", self.parsed_site, dims)
        d_model = dims.at(self.parsed_site).d_model
        if self.decoder.shape[1] != d_model:
            raise InvalidEditError("decoder", f"width {self.decoder.shape[1]} != d_model", f"d_model = {d_model}")


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class _EncodingFeatureEdit(_FeatureEdit):
    """A feature edit that reads the features' activations (ablation, clamp)."""

    kind: ClassVar[str] = "_encoding_feature"
    tensor_fields: ClassVar[tuple[str, ...]] = ("decoder", "encoder", "encoder_bias", "threshold", "input_bias")

    encoder: torch.Tensor  # [d_model, len(features)] columns of W_enc ([d_model, d_sae] for TopK)
    encoder_bias: torch.Tensor  # b_enc at the features (all of it for TopK)
    threshold: torch.Tensor  # JumpReLU's thresholds at the features (zeros for ReLU and TopK)
    input_bias: torch.Tensor  # b_dec where the SAE subtracts it from its input, else zeros
    top_k: int | None = None  # TopK SAEs: how many features are kept

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.features)
        columns = n if self.top_k is None else self.d_sae
        if self.top_k is not None:
            check_int("top_k", self.top_k, 1, self.d_sae)
        object.__setattr__(self, "encoder", check_tensor("encoder", self.encoder, 2, (None, columns)))
        object.__setattr__(self, "encoder_bias", check_tensor("encoder_bias", self.encoder_bias, 1, (columns,)))
        object.__setattr__(self, "threshold", check_tensor("threshold", self.threshold, 1, (n,)))
        width = self.decoder.shape[1]
        object.__setattr__(self, "input_bias", check_tensor("input_bias", self.input_bias, 1, (width,)))
        if self.encoder.shape[0] != width:
            raise InvalidEditError("encoder", f"has {self.encoder.shape[0]} rows, the decoder {width} columns", "equal")

    def _form(self, device: torch.device, dtype: torch.dtype, scale: float, value: float, clamp: bool) -> EditFeatures:
        n = len(self.features)
        encoder = self.encoder.to(device, dtype)
        return EditFeatures(
            encoder=encoder,
            bias=self.encoder_bias.to(device, dtype) - self.input_bias.to(device, dtype) @ encoder,
            threshold=self.threshold.to(device, dtype),
            decoder=self.decoder.to(device, dtype),
            scale=torch.full((n,), scale, device=device, dtype=dtype),
            value=torch.full((n,), value, device=device, dtype=dtype),
            clamp=torch.full((n,), clamp, device=device),
            top_k=self.top_k,
            index=None if self.top_k is None else torch.tensor(self.features, device=device),
            sae=str(thaw_json(self.sae)["sha256"]),
        )


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class FeatureAblation(_EncodingFeatureEdit):
    """Scale SAE features' activations by ``scale`` (0: zero ablation), keeping the error term."""

    kind: ClassVar[str] = "feature_ablation"

    scale: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "scale", check_scale("scale", self.scale))

    def compile(self, dims: ModelDims, device: torch.device, dtype: torch.dtype) -> list[tuple[Site, Op]]:
        form = self._form(device, dtype, self.scale, 0.0, False)
        return [(self.parsed_site, Op(feature_change(form), form=form))]


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class FeatureClamp(_EncodingFeatureEdit):
    """Set SAE features to ``value`` wherever they fire (or at ``positions``: position ids or a
    named set, :mod:`editors.position_sets`), keeping the error term."""

    kind: ClassVar[str] = "feature_clamp"

    value: float
    positions: tuple[int, ...] | str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "value", check_scale("value", self.value))
        if self.positions is not None:
            object.__setattr__(self, "positions", check_positions("positions", self.positions))

    def validate_for(self, dims: ModelDims) -> None:
        super().validate_for(dims)
        validate_position_set("positions", self.positions, self.parsed_site, dims)

    def compile(self, dims: ModelDims, device: torch.device, dtype: torch.dtype) -> list[tuple[Site, Op]]:
        form = self._form(device, dtype, 1.0, self.value, True)
        if self.positions is None:  # wherever it fires: the plain form, which rows fuse
            return [(self.parsed_site, Op(feature_change(form), form=form))]
        if isinstance(self.positions, str):

            def clamp(x: torch.Tensor) -> torch.Tensor:
                return x + (form.value - feature_acts(form, x)) @ form.decoder

            return [(self.parsed_site, position_set_op(self.positions, dims, clamp))]
        wanted = torch.tensor(self.positions, device=device)

        def fn(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
            current = feature_acts(form, x)
            change = torch.where(_position_mask(positions, wanted), form.value - current, torch.zeros_like(current))
            return x + change @ form.decoder

        return [(self.parsed_site, Op(fn, needs_positions=True))]


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class FeatureSteering(_FeatureEdit):
    """Add ``alpha`` times the sum of SAE features' decoder directions at every position."""

    kind: ClassVar[str] = "feature_steering"

    alpha: float = field(default=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "alpha", check_scale("alpha", self.alpha))

    def compile(self, dims: ModelDims, device: torch.device, dtype: torch.dtype) -> list[tuple[Site, Op]]:
        delta = (self.alpha * self.decoder.to(torch.float64).sum(dim=0)).to(device, dtype)

        def fn(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
            return x + delta

        return [(self.parsed_site, Op(fn, form=AddVector(delta)))]
