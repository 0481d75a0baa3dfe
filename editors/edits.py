"""The edit kinds: typed, validated, immutable intervention values.

An edit is a frozen dataclass. Construction checks everything that does not depend on a model
(types, ranges, finiteness, tensor ranks); :meth:`Edit.validate_for` checks the rest against a
model's :class:`ModelDims`. Both raise :class:`InvalidEditError` naming the field.

Tensors are private CPU copies. An edit's identity is :attr:`Edit.id`, the SHA-256 of its
canonical JSON spec, in which every tensor appears as the SHA-256 of its safetensors blob
(see :mod:`editors.serialization`).

:meth:`Edit.compile` turns an edit into :class:`Op` s bound to sites; the :class:`Surgeon`
runs them from its hooks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from editors.adapters import ModelDims
from editors.blobs import tensor_to_blob
from editors.errors import InvalidEditError
from editors.position_sets import PositionSet, check_positions
from editors.sites import RESIDUAL_POINTS, WEIGHT_POINTS, Site
from editors.validation import (
    check_choice,
    check_indices,
    check_int,
    check_scale,
    check_tensor,
    freeze_json,
    thaw_json,
)

ABLATION_MODES = ("zero", "mean", "resample")
STEERING_MODES = ("add", "ablate_then_add")
#: Odd stride that decorrelates resample draws of different batch rows at the same position.
_RESAMPLE_ROW_STRIDE = 7919


@dataclass(frozen=True)
class Op:
    """One compiled action at a site.

    For activation sites ``fn(x, positions) -> x`` where ``x`` is the activation in site layout
    and ``positions`` the model's position ids ``[batch|1, seq]`` (only computed when
    ``needs_positions``); with ``needs_rows`` it is ``fn(x, positions, rows)`` where ``rows``
    ``[batch]`` are the rows' sample keys (their batch row numbers, unless a batch of per-row
    stacks says otherwise); with ``needs_tokens`` it is ``fn(x, positions, tokens)`` where
    ``tokens`` ``[batch, seq]`` are the input ids of the forward's own tokens (what a VLM's image
    positions are read from). For weight sites ``fn(module_input, module_output) -> module_output``.

    ``form`` states what ``fn`` computes when it is one of the kit's plain algebraic forms, so a
    batch whose rows run different stacks can do it for every row in one step
    (:meth:`editors.Surgeon.rows`) instead of one gather, op and scatter per stack.
    """

    fn: Callable[..., torch.Tensor]
    needs_positions: bool = False
    needs_rows: bool = False
    needs_tokens: bool = False
    form: Any = None  # AddVector | AddLowRank | ZeroUnits | editors.feature_edits.EditFeatures | None


@dataclass(frozen=True, eq=False)
class AddVector:
    """``fn(x) = x + delta`` (``delta`` ``[d]``) at the positions ``positions`` (None: every one):
    rows fuse into one add of a per-row matrix whose rows without the edit are zero."""

    delta: torch.Tensor
    positions: torch.Tensor | None = None
    last: int = -1  # the largest of ``positions`` (known without reading the device)


@dataclass(frozen=True, eq=False)
class ZeroUnits:
    """``fn(x) = x`` with units ``index`` (of ``count``) along ``dim`` set to zero: rows fuse into
    one masked fill over a per-row mask."""

    dim: int
    index: torch.Tensor
    count: int


@dataclass(frozen=True, eq=False)
class AddLowRank:
    """``fn(x, y) = y + (x V) Uᵀ``: rows fuse into two matmuls over every stack's factors side by
    side, each row masked to its own columns."""

    U: torch.Tensor
    V: torch.Tensor


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


class Edit:
    """Base class of the edit kinds (subclasses are frozen dataclasses)."""

    kind: ClassVar[str]
    tensor_fields: ClassVar[tuple[str, ...]]
    json_fields: ClassVar[tuple[str, ...]] = ()
    #: Fields left out of the spec while None: added after edits of the kind were stored, so those
    #: edits keep their spec and id.
    optional_fields: ClassVar[tuple[str, ...]] = ()
    registry: ClassVar[dict[str, type[Edit]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Edit.registry[cls.kind] = cls

    # -- identity and serialised form -------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The non-tensor fields as plain JSON values."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name in self.tensor_fields:
                continue
            value = getattr(self, f.name)
            if value is None and f.name in self.optional_fields:
                continue
            if f.name in self.json_fields:
                value = thaw_json(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: t for name in self.tensor_fields if (t := getattr(self, name)) is not None}

    def __repr__(self) -> str:
        """Fields as values, tensors as shape, dtype and SHA-256 (a vector's numbers help nobody)."""
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self.tensor_fields and value is not None:
                digest = hashlib.sha256(self.artifact_blobs[f.name]).hexdigest()[:12]
                dtype = str(value.dtype).removeprefix("torch.")
                shown = f"<tensor {list(value.shape)} {dtype} sha256 {digest}…>"
            else:
                shown = canonical_json(thaw_json(value)) if f.name in self.json_fields else repr(value)
                shown = shown if len(shown) <= 80 else shown[:77] + "…"
            parts.append(f"{f.name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"

    @cached_property
    def artifact_blobs(self) -> dict[str, bytes]:
        """Artifact name → safetensors blob of that one tensor."""
        return {name: tensor_to_blob(t) for name, t in self.tensors().items()}

    def spec(self) -> dict[str, Any]:
        """Canonical description: kind, parameters, and artifacts by SHA-256, dtype and shape."""
        tensors = self.tensors()
        return {
            "kind": self.kind,
            "params": self.params(),
            "artifacts": {
                name: {
                    "sha256": hashlib.sha256(blob).hexdigest(),
                    "dtype": str(tensors[name].dtype).removeprefix("torch."),
                    "shape": list(tensors[name].shape),
                }
                for name, blob in self.artifact_blobs.items()
            },
        }

    def to_json(self) -> str:
        """The canonical spec as JSON (sorted keys, no whitespace)."""
        return canonical_json(self.spec())

    @cached_property
    def id(self) -> str:
        """SHA-256 (hex) of the canonical JSON spec: the edit's identity."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Edit) and self.id == other.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- model-dependent behaviour ----------------------------------------------------------
    def validate_for(self, dims: ModelDims) -> None:
        """Check this edit against a model's dimensions; raise :class:`InvalidEditError` if it does not fit."""
        raise NotImplementedError

    def compile(self, dims: ModelDims, device: torch.device, dtype: torch.dtype) -> list[tuple[Site, Op]]:
        """Ops for this edit with tensors on ``device``/``dtype``; ``validate_for`` must have passed."""
        raise NotImplementedError


def _check_layer(field_name: str, layer: int, dims: ModelDims) -> None:
    check_int(field_name, layer, 0, dims.n_layers - 1)


def _check_residual_site(field_name: str, site: Site, dims: ModelDims) -> None:
    """``site`` is a residual point of a layer of its tower (a VLM's vision encoder or the language model)."""
    try:
        dims = dims.at(site)
    except InvalidEditError as exc:
        raise InvalidEditError(field_name, exc.problem, exc.allowed) from None
    _check_layer(field_name, site.layer, dims)
    if site.point not in dims.residual_points():
        raise InvalidEditError(
            field_name, f"{site.name} does not exist in this architecture", " | ".join(dims.residual_points())
        )


def validate_position_set(field_name: str, positions: object, site: Site, dims: ModelDims) -> None:
    """A named position set (``positions`` a string) fits the model and a language-model site."""
    if not isinstance(positions, str):
        return
    if site.tower:
        raise InvalidEditError(field_name, f"a position set names language-model tokens, not {site.name}'s", "ids")
    PositionSet.parse(field_name, positions).validate_for(field_name, dims)


def position_set_op(positions: str, dims: ModelDims, change: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    """``change`` at the positions of a named set, resolved per row from the input ids."""
    chosen = PositionSet.parse("positions", positions)

    def fn(x: torch.Tensor, ids: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        return torch.where(chosen.mask(tokens, dims).unsqueeze(-1), change(x), x)

    return Op(fn, needs_tokens=True)


def add_product(y: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y + h @ w`` (``y`` ``[..., n]``, ``h`` ``[..., k]``, ``w`` ``[k, n]``) as one GEMM over the
    flattened rows, where the two-step form launches a matmul and an add."""
    return torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), w).view(y.shape)


def _position_mask(positions: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    return torch.isin(positions, wanted).unsqueeze(-1)


def _resample_index(order: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Deterministic pool row per (row key, absolute position): independent of threads and calls."""
    offsets = rows.to(positions.device).unsqueeze(1) * _RESAMPLE_ROW_STRIDE
    return order[(positions.expand(rows.shape[0], -1) + offsets) % order.numel()]


def _ablation_fields(edit: _Ablation, unit_field: str) -> None:
    """Validate an ablation; store its units sorted, with ``means``/``pool`` rows permuted to match."""
    raw = getattr(edit, unit_field)
    units = check_indices(unit_field, raw)
    given = list(raw)
    order = sorted(range(len(units)), key=given.__getitem__)
    object.__setattr__(edit, unit_field, units)
    check_int("layer", edit.layer)
    check_choice("mode", edit.mode, ABLATION_MODES)
    check_int("seed", edit.seed)
    k = len(units)
    extra = () if unit_field == "neurons" else (None,)
    needed = {"zero": (), "mean": ("means",), "resample": ("pool",)}[edit.mode]
    for name in ("means", "pool"):
        value = getattr(edit, name)
        if name in needed and value is None:
            raise InvalidEditError(
                name,
                f"is required for mode {edit.mode!r}",
                f"a tensor from editors.stats.activation_stats over the same {unit_field}",
            )
        if name not in needed and value is not None:
            raise InvalidEditError(name, f"must be omitted for mode {edit.mode!r}", "None")
    if edit.means is not None:
        means = check_tensor("means", edit.means, 1 + len(extra), (k, *extra))
        object.__setattr__(edit, "means", means[order].contiguous())
    if edit.pool is not None:
        pool = check_tensor("pool", edit.pool, 2 + len(extra), (None, k, *extra))
        object.__setattr__(edit, "pool", pool[:, order].contiguous())


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class _Ablation(Edit):
    """Shared body of head and neuron ablation (not an edit kind of its own)."""

    kind: ClassVar[str] = "_ablation"
    tensor_fields: ClassVar[tuple[str, ...]] = ("means", "pool")
    json_fields: ClassVar[tuple[str, ...]] = ("provenance",)
    optional_fields: ClassVar[tuple[str, ...]] = ("provenance",)

    layer: int
    mode: str = "zero"
    means: torch.Tensor | None = None
    pool: torch.Tensor | None = None
    seed: int = 0
    provenance: Any = field(default=None)  # how the edit was found (e.g. circuit discovery)

    unit_field: ClassVar[str]
    point: ClassVar[str]

    def __post_init__(self) -> None:
        _ablation_fields(self, self.unit_field)
        object.__setattr__(self, "provenance", freeze_json("provenance", self.provenance))

    def _units(self) -> tuple[int, ...]:
        return getattr(self, self.unit_field)

    def _limits(self, dims: ModelDims) -> tuple[int, int | None]:
        """How many units the site has, and the width of one unit's statistics (None: scalar)."""
        raise NotImplementedError

    def validate_for(self, dims: ModelDims) -> None:
        _check_layer("layer", self.layer, dims)
        count, width = self._limits(dims)
        for i, unit in enumerate(self._units()):
            check_int(f"{self.unit_field}[{i}]", unit, 0, count - 1)
        for name, tensor in (("means", self.means), ("pool", self.pool)):
            if width is not None and tensor is not None and tensor.shape[-1] != width:
                raise InvalidEditError(name, f"last dimension {tensor.shape[-1]} != d_head", f"d_head = {width}")

    def compile(self, dims: ModelDims, device: torch.device, dtype: torch.dtype) -> list[tuple[Site, Op]]:
        return self._compile_at(Site(self.layer, self.point), 2, self._limits(dims)[0], device, dtype)

    def _replace(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None,
        rows: torch.Tensor | None,
        dim: int,
        index: torch.Tensor,
        means: torch.Tensor | None,
        pool: torch.Tensor | None,
        order: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.mode == "zero":
            return x.index_fill(dim, index, 0.0)
        lead = x.shape[:2]
        if self.mode == "mean":
            values = means.expand(*lead, *means.shape)
        else:
            values = pool[_resample_index(order, positions, rows)]
        return x.index_copy(dim, index, values.to(x.dtype))

    def _compile_at(
        self, site: Site, dim: int, count: int, device: torch.device, dtype: torch.dtype
    ) -> list[tuple[Site, Op]]:
        index = torch.tensor(self._units(), device=device)
        means = None if self.means is None else self.means.to(device, dtype)
        pool = None if self.pool is None else self.pool.to(device, dtype)
        order = None
        if pool is not None:
            generator = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(pool.shape[0], generator=generator).to(device)

        resample = self.mode == "resample"

        def fn(x: torch.Tensor, positions: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
            return self._replace(x, positions, rows, dim, index, means, pool, order)

        form = ZeroUnits(dim, index, count) if self.mode == "zero" else None
        return [(site, Op(fn, needs_positions=resample, needs_rows=resample, form=form))]


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class HeadAblation(_Ablation):
    """Zero / mean / resample ablation of attention heads at ``blocks.{layer}.attn.hook_z``.

    ``means``: ``[len(heads), d_head]``; ``pool``: ``[N, len(heads), d_head]`` (rows are
    activations sampled from a reference corpus; a position's replacement row is a
    deterministic function of ``seed``, batch row and absolute position).
    """

    kind: ClassVar[str] = "head_ablation"
    unit_field: ClassVar[str] = "heads"
    point: ClassVar[str] = "attn.hook_z"
    heads: tuple[int, ...]

    def _limits(self, dims: ModelDims) -> tuple[int, int | None]:
        return dims.n_heads, dims.d_head


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class NeuronAblation(_Ablation):
    """Zero / mean / resample ablation of MLP neurons at ``blocks.{layer}.mlp.hook_post``.

    ``means``: ``[len(neurons)]``; ``pool``: ``[N, len(neurons)]``.
    """

    kind: ClassVar[str] = "neuron_ablation"
    unit_field: ClassVar[str] = "neurons"
    point: ClassVar[str] = "mlp.hook_post"
    neurons: tuple[int, ...]

    def _limits(self, dims: ModelDims) -> tuple[int, int | None]:
        return dims.d_mlp, None


def _unit(vector: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return F.normalize(vector.to(torch.float64), dim=0).to(device, dtype)


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class DirectionalAblation(Edit):
    """Project ``direction`` out of the residual stream at ``layers`` (Arditi et al. 2024).

    ``points`` chooses which residual sites of each layer (default: every residual site the
    architecture has), so the stream carries no component along the direction there.
    """

    kind: ClassVar[str] = "directional_ablation"
    tensor_fields: ClassVar[tuple[str, ...]] = ("direction",)
    json_fields: ClassVar[tuple[str, ...]] = ("provenance",)
    optional_fields: ClassVar[tuple[str, ...]] = ("provenance",)

    direction: torch.Tensor
    layers: tuple[int, ...]
    points: tuple[str, ...] | None = None
    provenance: Any = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "provenance", freeze_json("provenance", self.provenance))
        direction = check_tensor("direction", self.direction, 1)
        if direction.to(torch.float64).norm() == 0:
            raise InvalidEditError("direction", "is the zero vector", "a non-zero vector")
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "layers", check_indices("layers", self.layers))
        if self.points is not None:
            if isinstance(self.points, str):
                raise InvalidEditError("points", f"expected a list, got {self.points!r}", " | ".join(RESIDUAL_POINTS))
            points = tuple(check_choice(f"points[{i}]", p, RESIDUAL_POINTS) for i, p in enumerate(self.points))
            if not points or len(set(points)) != len(points):
                raise InvalidEditError(
                    "points", f"must be distinct and non-empty, got {list(points)}", " | ".join(RESIDUAL_POINTS)
                )
            object.__setattr__(self, "points", tuple(p for p in RESIDUAL_POINTS if p in points))

    def _points(self, dims: ModelDims) -> tuple[str, ...]:
        return self.points if self.points is not None else dims.residual_points()

    def validate_for(self, dims: ModelDims) -> None:
        if self.direction.shape[0] != dims.d_model:
            raise InvalidEditError(
                "direction", f"length {self.direction.shape[0]} != d_model", f"d_model = {dims.d_model}"
            )
        for i, layer in enumerate(self.layers):
            for point in self._points(dims):
                _check_residual_site(f"layers[{i}]", Site(layer, point), dims)

    def compile(self, dims: ModelDims, device: torch.device, dtype: torch.dtype) -> list[tuple[Site, Op]]:
        d = _unit(self.direction, device, dtype)

        def fn(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
            return x - (x @ d).unsqueeze(-1) * d

        op = Op(fn)
        return [(Site(layer, point), op) for layer in self.layers for point in self._points(dims)]


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class Steering(Edit):
    """Add ``scale * vector`` to a residual site (ActAdd / CAA), at all or chosen positions.

    ``mode="ablate_then_add"`` first projects the vector's direction out, then adds, so the
    component along the vector is set to ``scale * |vector|`` whatever it was. ``positions``
    are the model's absolute position ids, or a named set of a language-model site's tokens
    (``image``, ``image[r0:r1,c0:c1]``, ``text``, ``last``: :mod:`editors.position_sets`);
    ``None``: every position, including generated ones.
    ``provenance`` records how a derived vector was computed (prompt pairs, method).
    """

    kind: ClassVar[str] = "steering"
    tensor_fields: ClassVar[tuple[str, ...]] = ("vector",)
    json_fields: ClassVar[tuple[str, ...]] = ("provenance",)

    site: str
    vector: torch.Tensor
    scale: float = 1.0
    mode: str = "add"
    positions: tuple[int, ...] | str | None = None
    provenance: Any = field(default=None)

    def __post_init__(self) -> None:
        Site.parse(self.site, "site", RESIDUAL_POINTS)
        object.__setattr__(self, "vector", check_tensor("vector", self.vector, 1))
        object.__setattr__(self, "scale", check_scale("scale", self.scale))
        check_choice("mode", self.mode, STEERING_MODES)
        if self.mode == "ablate_then_add" and self.vector.to(torch.float64).norm() == 0:
            raise InvalidEditError(
                "vector", "is the zero vector, which has no direction to ablate", "a non-zero vector"
            )
        if self.positions is not None:
            object.__setattr__(self, "positions", check_positions("positions", self.positions))
        object.__setattr__(self, "provenance", freeze_json("provenance", self.provenance))

    @property
    def parsed_site(self) -> Site:
        return Site.parse(self.site, "site", RESIDUAL_POINTS)

    def validate_for(self, dims: ModelDims) -> None:
        _check_residual_site("site", self.parsed_site, dims)
        d_model = dims.at(self.parsed_site).d_model
        if self.vector.shape[0] != d_model:
            raise InvalidEditError("vector", f"length {self.vector.shape[0]} != d_model", f"d_model = {d_model}")
        validate_position_set("positions", self.positions, self.parsed_site, dims)

    def compile(self, dims: ModelDims, device: torch.device, dtype: torch.dtype) -> list[tuple[Site, Op]]:
        delta = (self.scale * self.vector.to(torch.float64)).to(device, dtype)
        direction = _unit(self.vector, device, dtype) if self.mode == "ablate_then_add" else None

        def change(x: torch.Tensor) -> torch.Tensor:
            if direction is not None:
                x = x - (x @ direction).unsqueeze(-1) * direction
            return x + delta

        if isinstance(self.positions, str):
            return [(self.parsed_site, position_set_op(self.positions, dims, change))]
        wanted = None if self.positions is None else torch.tensor(self.positions, device=device)

        def fn(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
            if wanted is None:
                return change(x)
            return torch.where(_position_mask(positions, wanted), change(x), x)

        form = AddVector(delta, wanted, max(self.positions or (-1,))) if direction is None else None
        return [(self.parsed_site, Op(fn, needs_positions=wanted is not None, form=form))]


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class LowRank(Edit):
    """Weight delta ``ΔW = U Vᵀ`` on a linear module, applied as ``y += (x V) Uᵀ``.

    ``site`` is a weight site (``blocks.{L}.attn.W_O|mlp.W_in|mlp.W_out``); ``U``:
    ``[d_out, r]``, ``V``: ``[d_in, r]``. ``provenance`` records how it was computed (a ROME
    request and its hyper-parameters, for example).
    """

    kind: ClassVar[str] = "low_rank"
    tensor_fields: ClassVar[tuple[str, ...]] = ("U", "V")
    json_fields: ClassVar[tuple[str, ...]] = ("provenance",)

    site: str
    U: torch.Tensor
    V: torch.Tensor
    provenance: Any = field(default=None)

    def __post_init__(self) -> None:
        Site.parse(self.site, "site", WEIGHT_POINTS)
        U = check_tensor("U", self.U, 2)
        V = check_tensor("V", self.V, 2, (None, U.shape[1]))
        object.__setattr__(self, "U", U)
        object.__setattr__(self, "V", V)
        object.__setattr__(self, "provenance", freeze_json("provenance", self.provenance))

    @property
    def parsed_site(self) -> Site:
        return Site.parse(self.site, "site", WEIGHT_POINTS)

    def shape_for(self, dims: ModelDims) -> tuple[int, int]:
        """``(d_in, d_out)`` of the module at this site (in its tower)."""
        dims = dims.at(self.parsed_site)
        return {
            "attn.W_O": (dims.n_heads * dims.d_head, dims.d_model),
            "mlp.W_in": (dims.d_model, dims.d_mlp),
            "mlp.W_out": (dims.d_mlp, dims.d_model),
        }[self.parsed_site.point]

    def validate_for(self, dims: ModelDims) -> None:
        try:
            _check_layer("site", self.parsed_site.layer, dims.at(self.parsed_site))
        except InvalidEditError as exc:
            raise InvalidEditError("site", exc.problem, exc.allowed) from None
        d_in, d_out = self.shape_for(dims)
        rank_limit = min(d_in, d_out)
        if self.U.shape[0] != d_out:
            raise InvalidEditError("U", f"shape {list(self.U.shape)} has {self.U.shape[0]} rows", f"[{d_out}, r]")
        if self.V.shape[0] != d_in:
            raise InvalidEditError("V", f"shape {list(self.V.shape)} has {self.V.shape[0]} rows", f"[{d_in}, r]")
        if self.U.shape[1] > rank_limit:
            raise InvalidEditError("U", f"rank {self.U.shape[1]} exceeds the module's", f"r <= {rank_limit}")

    def delta(self) -> torch.Tensor:
        """The dense ``ΔW = U Vᵀ``, ``[d_out, d_in]`` (float64)."""
        return self.U.to(torch.float64) @ self.V.to(torch.float64).T

    def compile(self, dims: ModelDims, device: torch.device, dtype: torch.dtype) -> list[tuple[Site, Op]]:
        U = self.U.to(device, dtype)
        V = self.V.to(device, dtype)

        Ut = U.T

        def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return add_product(y, x @ V, Ut)

        return [(self.parsed_site, Op(fn, form=AddLowRank(U, V)))]


def edit_kinds() -> dict[str, type[Edit]]:
    """Public edit kinds by name."""
    # each registers its kinds (and imports this module, so neither can be imported at its top)
    import editors.feature_edits
    import editors.vision  # noqa: F401

    return {k: v for k, v in Edit.registry.items() if not k.startswith("_")}


def edit_from_parts(kind: str, params: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Edit:
    """Build an edit of ``kind``; every failure is an :class:`InvalidEditError`."""
    cls = edit_kinds().get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidEditError("kind", f"unknown edit kind {kind!r}", " | ".join(sorted(edit_kinds())))
    if not isinstance(params, Mapping):
        raise InvalidEditError("params", f"expected an object, got {type(params).__name__}", "a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names) + sorted(set(tensors) - set(cls.tensor_fields))
    if unknown:
        raise InvalidEditError(unknown[0], f"is not a field of {kind}", ", ".join(sorted(names)))
    try:
        return cls(**params, **tensors)
    except TypeError as exc:  # missing required fields
        raise InvalidEditError("params", str(exc), ", ".join(sorted(names))) from None
