"""The Surgeon: one shared copy of the base weights, any edit stack per call.

A :class:`Surgeon` owns the dispatcher hooks of one model. The stack of edits to run under is
held in a :class:`contextvars.ContextVar`, so each thread (or asyncio task) sees its own stack
and concurrent calls under different stacks never mix. Weights are never modified.

Hooks are installed on demand, once per (layer, hook point), when a compiled
:class:`EditStack` first needs them, and removed when no live stack needs them any more. A
forward pass under an empty stack therefore runs hooks only at points some live stack uses,
and each of those returns after one context-variable read.

A batch can also run each row under its own stack (:meth:`Surgeon.rows`): the serving engine
puts requests for different versions into one forward. Each site then runs, for every distinct
stack with ops there, those ops on that stack's rows only (gathered, edited, scattered back); a
stack that covers the whole batch runs on the batch directly, with no gather at all.

Example::

    surgeon = Surgeon(model)
    with surgeon.apply([Steering(site="blocks.2.hook_resid_pre", vector=v, scale=4.0)]):
        logits = model(ids).logits
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from itertools import count
from typing import Any

import torch
from torch import nn

from editors.adapters import ArchitectureAdapter, ModelDims, adapter_for, module_at
from editors.edits import Edit, Op
from editors.errors import InvalidEditError
from editors.fingerprint import weights_sha256
from editors.fusion import fused_op
from editors.sae import SparseAutoencoder, split_sae_point
from editors.sites import ACTIVATION_POINTS, QKV_POINTS, TOWERS, WEIGHT_POINTS, Site

#: A place hooks are installed: (layer, unit) with unit one of ``_UNITS_BY_POINT``'s values, prefixed
#: with ``{tower}.`` for a block of another tower (a VLM's vision encoder: ``vision.block_post``).
Unit = tuple[int, str]

_UNITS_BY_POINT: dict[str, tuple[str, ...]] = {
    "hook_resid_pre": ("block_pre",),
    "hook_resid_mid": ("mid_pre", "mlp_post"),
    "hook_resid_post": ("block_post",),
    "hook_attn_out": ("attn_post",),
    "hook_mlp_out": ("mlp_post",),
    "attn.hook_z": ("z_pre",),
    "mlp.hook_post": ("neurons_pre",),
    "attn.hook_q": ("q_post",),
    "attn.hook_k": ("k_post",),
    "attn.hook_v": ("v_post",),
    "hook_embed": ("embed_post",),
    "ln_final.hook_normalized": ("final_norm_post",),
    "hook_image_embeds": ("image_embeds_post",),
    "attn.W_O": ("attn.W_O",),
    "mlp.W_in": ("mlp.W_in",),
    "mlp.W_out": ("mlp.W_out",),
}
_surgeon_ids = count()


@dataclass(frozen=True, eq=False)
class RowGroup:
    """The ops one stack runs at one site, and the batch rows it runs them on.

    ``rows`` is ``None`` when the stack covers every row. ``keys`` are the rows' sample keys (the
    row number a resample ablation draws with): ``None`` means the batch row numbers.
    """

    ops: tuple[Op, ...]
    rows: torch.Tensor | None = None
    keys: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class EditStack:
    """A validated, compiled, ordered list of edits for one Surgeon. Build with :meth:`Surgeon.compile`."""

    edits: tuple[Edit, ...]
    ops: dict[Site, tuple[Op, ...]]
    position_layers: frozenset[int]
    units: frozenset[Unit]
    needs_tokens: bool = False  # some op reads the forward's input ids (recorded at the embeddings)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(edit.id for edit in self.edits)

    @cached_property
    def groups(self) -> dict[Site, tuple[RowGroup, ...]]:
        """Every row runs this stack: one group per site, over the whole batch."""
        return {site: (RowGroup(ops),) for site, ops in self.ops.items()}


@dataclass(frozen=True, eq=False)
class RowStacks:
    """One stack per batch row, for one forward. Build with :meth:`Surgeon.rows`.

    It keeps its stacks alive (and so their hooks installed) for as long as it lives.
    """

    stacks: tuple[EditStack, ...]
    groups: dict[Site, tuple[RowGroup, ...]]
    position_layers: frozenset[int]
    needs_tokens: bool = False


class Surgeon:
    """Hook dispatcher for one ``transformers`` causal LM (GPT-2, GPT-NeoX or Llama family)."""

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter | None = None) -> None:
        self.model = model
        self.adapter = adapter or adapter_for(model)
        self.dims: ModelDims = self.adapter.dims(model)
        self._active: ContextVar[EditStack | RowStacks | None] = ContextVar(
            f"scalpel_stack_{next(_surgeon_ids)}", default=None
        )
        self._scratch = threading.local()
        self._lock = threading.Lock()
        self._installed: dict[Unit, tuple[Any, int]] = {}
        self._released: list[frozenset[Unit]] = []  # from finalizers; drained under the lock

    # -- compiling --------------------------------------------------------------------------
    @cached_property
    def weights_sha256(self) -> str:
        """SHA-256 of the base weights (computed once: the Surgeon never changes them)."""
        return weights_sha256(self.model)

    @property
    def device_dtype(self) -> tuple[torch.device, torch.dtype]:
        parameter = next(self.model.parameters())
        return parameter.device, parameter.dtype

    def validate(self, edits: Sequence[Edit]) -> None:
        """Raise :class:`InvalidEditError` (field prefixed with ``edits[i].``) if any edit does not fit."""
        for i, edit in enumerate(edits):
            if not isinstance(edit, Edit):
                raise InvalidEditError(f"edits[{i}]", f"expected an Edit, got {type(edit).__name__}", "Edit values")
            try:
                edit.validate_for(self.dims)
            except InvalidEditError as exc:
                raise InvalidEditError(f"edits[{i}].{exc.field}", exc.problem, exc.allowed) from None

    def compile(
        self,
        edits: Sequence[Edit],
        extra_ops: Sequence[tuple[str, Op]] = (),
    ) -> EditStack:
        """Validate and compile ``edits`` (in order) into an :class:`EditStack`.

        ``extra_ops`` are raw ``(site name, Op)`` pairs run after the edits (tracing, your own
        hooks, activation patching and ROME's value optimisation use them; they are not edits and
        are never stored).
        """
        edits = tuple(edits)
        self.validate(edits)
        device, dtype = self.device_dtype
        ops: dict[Site, list[Op]] = {}
        for edit in edits:
            for site, op in edit.compile(self.dims, device, dtype):
                ops.setdefault(site, []).append(op)
        for name, op in extra_ops:
            ops.setdefault(self.site(name, "extra_ops"), []).append(op)
        position_layers = frozenset(
            s.layer
            for s, site_ops in ops.items()
            if s.layer >= 0 and not s.tower and any(o.needs_positions for o in site_ops)
        )
        units = {(s.layer, f"{s.tower}.{unit}" if s.tower else unit) for s in ops for unit in _UNITS_BY_POINT[s.point]}
        units |= {(layer, "block_pre") for layer in position_layers}
        needs_tokens = any(o.needs_tokens for site_ops in ops.values() for o in site_ops)
        if needs_tokens:
            units |= {(-1, "embed_post"), (-1, "forward_post")}
        stack = EditStack(edits, {s: tuple(o) for s, o in ops.items()}, position_layers, frozenset(units), needs_tokens)
        self._acquire(stack.units)
        weakref.finalize(stack, self._release_later, stack.units)
        return stack

    def rows(self, stacks: Sequence[EditStack], keys: Sequence[int] | None = None) -> RowStacks:
        """Per-row stacks for one forward over ``len(stacks)`` rows (row ``i`` runs ``stacks[i]``).

        ``keys`` are the rows' sample keys for resample ablation (default: 0 for every row, so each
        row draws exactly what it would draw as the only row of a batch).
        """
        stacks = tuple(stacks)
        if not stacks:
            raise ValueError("rows() needs at least one stack")
        device = self.device_dtype[0]
        by_stack: dict[int, list[int]] = {}
        for row, stack in enumerate(stacks):
            if stack.ops:
                by_stack.setdefault(id(stack), []).append(row)
        # the rows of the groups that gather, their keys and every row's key reach the device in
        # one copy, split into views there: on a GPU a copy from host memory waits for queued work
        every = list(keys) if keys is not None else [0] * len(stacks)
        partial = [row_list for row_list in by_stack.values() if len(row_list) < len(stacks)]
        flat = [row for row_list in partial for row in row_list]
        sizes = [len(row_list) for row_list in partial]
        moved = torch.tensor([*flat, *(every[row] for row in flat), *every], dtype=torch.long).to(device)
        rows_of = dict(zip(map(id, partial), moved[: len(flat)].split(sizes), strict=True))
        keys_of = dict(zip(map(id, partial), moved[len(flat) : 2 * len(flat)].split(sizes), strict=True))
        every_key = moved[2 * len(flat) :]
        groups: dict[Site, list[RowGroup]] = {}
        for row_list in by_stack.values():
            stack, group = stacks[row_list[0]], id(row_list)
            for site, ops in stack.ops.items():
                row_group = RowGroup(ops, rows_of.get(group), keys_of.get(group, every_key))
                groups.setdefault(site, []).append(row_group)
        position_layers = frozenset().union(*(stack.position_layers for stack in stacks))
        fused = {site: _fuse(g, len(stacks)) for site, g in groups.items()}
        return RowStacks(stacks, fused, position_layers, any(stack.needs_tokens for stack in stacks))

    def site(self, name: str, field: str = "site") -> Site:
        """Parse an activation site name and check that this model has it."""
        site = Site.parse(name, field, ACTIVATION_POINTS)
        try:
            dims, adapter = self.dims.at(site), self.adapter.tower(site.tower)
        except InvalidEditError as exc:
            raise InvalidEditError(field, exc.problem, exc.allowed) from None
        if site.layer >= dims.n_layers or (site.is_residual and site.point not in dims.residual_points()):
            raise InvalidEditError(field, f"{name} does not exist in this model", f"layers 0..{dims.n_layers - 1}")
        missing = (
            (site.point in QKV_POINTS and not adapter.qkv)
            or (site.point == "ln_final.hook_normalized" and not adapter.final_norm)
            or (site.point == "hook_image_embeds" and not adapter.image_embeds)
        )
        if missing:
            raise InvalidEditError(
                field, f"the {self.adapter.family!r} adapter does not name the modules of {name}", "its other sites"
            )
        return site

    # -- running ----------------------------------------------------------------------------
    @contextmanager
    def apply(self, edits: EditStack | Sequence[Edit]) -> Iterator[EditStack]:
        """Run the body under ``edits`` (an inner ``apply`` replaces, not extends, an outer one)."""
        stack = edits if isinstance(edits, EditStack) else self.compile(edits)
        token = self._active.set(stack)
        try:
            yield stack
        finally:
            self._active.reset(token)

    @contextmanager
    def apply_rows(self, rows: RowStacks) -> Iterator[RowStacks]:
        """Run the body's forwards with batch row ``i`` under ``rows.stacks[i]``.

        Pass ``position_ids`` ``[batch, seq]`` to the model when rows are left-padded, so edits
        at chosen positions see each row's own positions.
        """
        token = self._active.set(rows)
        try:
            yield rows
        finally:
            self._active.reset(token)

    @contextmanager
    def trace(
        self,
        sites: Sequence[str],
        edits: EditStack | Sequence[Edit] = (),
        every_forward: bool = False,
        keep_grad: bool = False,
        saes: Sequence[SparseAutoencoder] = (),
    ) -> Iterator[dict[str, Any]]:
        """Record the activations at ``sites`` (under ``edits``) into the yielded dict.

        By default each site holds its activation from the latest forward pass (detached). With
        ``every_forward`` each site holds a list with one activation per forward, in order (every
        step of a ``generate``, not only the last). With ``keep_grad`` the recorded tensors stay in
        the autograd graph (run the forward with gradients enabled to use them). A site may name
        an SAE's view of a residual site, for an SAE in ``saes`` there: ``{site}.sae.acts`` (its
        feature activations), ``{site}.sae.error`` (what it does not reconstruct) or
        ``{site}.sae.recons`` (its reconstruction)."""
        by_site = {sae.site: sae for sae in saes}
        recorders = []
        cache: dict[str, Any] = {name: [] for name in sites} if every_forward else dict.fromkeys(sites)
        for i, name in enumerate(sites):
            at, view = split_sae_point(name)
            self.site(at, f"sites[{i}]")
            if view is not None and at not in by_site:
                raise InvalidEditError(f"sites[{i}]", f"names an SAE at {at} but none was given", "saes=[an SAE there]")
            seen = None if view is None else by_site[at].view(view)
            recorders.append((at, Op(_recorder(cache, name, every_forward, keep_grad, seen))))
        base = edits.edits if isinstance(edits, EditStack) else tuple(edits)
        with self.apply(self.compile(base, extra_ops=recorders)):
            yield cache

    def run_with_hooks(
        self,
        *args: Any,
        fwd_hooks: Sequence[tuple[str, Callable[[torch.Tensor], torch.Tensor | None]]] = (),
        edits: EditStack | Sequence[Edit] = (),
        **kwargs: Any,
    ) -> Any:
        """Run ``model(*args, **kwargs)`` with your own functions at activation sites, after
        ``edits`` (TransformerLens' ``run_with_hooks``): each ``fn(activation)`` returns a
        replacement or None to leave it as it is. ``activation`` has the site's layout
        (``attn.hook_z``: ``[batch, pos, n_heads, d_head]``)."""
        base = edits.edits if isinstance(edits, EditStack) else tuple(edits)
        extra = [(name, Op(_user_hook(fn))) for name, fn in fwd_hooks]
        with self.apply(self.compile(base, extra_ops=extra)):
            return self.model(*args, **kwargs)

    @property
    def active(self) -> EditStack | RowStacks | None:
        """The stack the current context runs under."""
        return self._active.get()

    def detach(self) -> None:
        """Remove every hook (stacks compiled earlier must not be used afterwards)."""
        with self._lock:
            for handle, _ in self._installed.values():
                handle.remove()
            self._installed.clear()

    # -- hook bookkeeping -------------------------------------------------------------------
    def _acquire(self, units: frozenset[Unit]) -> None:
        with self._lock:
            self._drain_released()
            for unit in units:
                handle, refs = self._installed.get(unit) or (self._install(unit), 0)
                self._installed[unit] = (handle, refs + 1)

    def _release_later(self, units: frozenset[Unit]) -> None:
        """Finalizer of a stack. It may run inside garbage collection while this thread holds the
        lock, so it never blocks: if the lock is busy, the next compile drains the release."""
        self._released.append(units)
        if self._lock.acquire(blocking=False):
            try:
                self._drain_released()
            finally:
                self._lock.release()

    def _drain_released(self) -> None:
        while self._released:
            for unit in self._released.pop():
                if unit not in self._installed:
                    continue
                handle, refs = self._installed[unit]
                if refs > 1:
                    self._installed[unit] = (handle, refs - 1)
                else:
                    handle.remove()
                    del self._installed[unit]

    def _install(self, unit: Unit) -> Any:
        layer, name = unit
        tower, _, name = name.partition(".") if name.startswith(TOWERS) else ("", "", name)
        if tower:
            return self._install_block_unit(layer, name, tower)
        if name == "forward_post":  # the forward's input ids are its own: forget them when it ends
            return self.model.register_forward_hook(self._forget_tokens)
        if name == "embed_post":
            return self.model.get_input_embeddings().register_forward_hook(self._hook_embed(), prepend=True)
        if name == "final_norm_post":
            norm = module_at(self.model, self.adapter.final_norm)
            return norm.register_forward_hook(self._output_hook(Site(-1, "ln_final.hook_normalized")), prepend=True)
        if name == "image_embeds_post":
            projector = module_at(self.model, self.adapter.image_embeds)
            return projector.register_forward_hook(self._output_hook(Site(-1, "hook_image_embeds")), prepend=True)
        return self._install_block_unit(layer, name, "")

    def _install_block_unit(self, layer: int, name: str, tower: str) -> Any:
        adapter = self.adapter.tower(tower)
        if name in WEIGHT_POINTS:
            site = Site(layer, name, tower)
            return self.adapter.weight_module(self.model, site).register_forward_hook(
                self._hook_weight(site), prepend=True
            )
        if name in ("q_post", "k_post", "v_post"):
            which = "qkv".index(name[0])
            path = adapter.qkv[which if len(adapter.qkv) == 3 else 0]
            module = module_at(adapter.blocks(self.model)[layer], path)
            return module.register_forward_hook(self._hook_qkv(layer, which, tower), prepend=True)
        role, factory = {
            "block_pre": (None, self._hook_block_pre),
            "block_post": (None, self._hook_block_post),
            "mid_pre": ("mid_norm", self._hook_mid_pre),
            "mlp_post": ("mlp", self._hook_mlp_post),
            "attn_post": ("attn", self._hook_attn_post),
            "z_pre": ("attn_out", self._hook_z_pre),
            "neurons_pre": ("mlp_out", self._hook_neurons_pre),
        }[name]
        module = adapter.blocks(self.model)[layer] if role is None else adapter.module(self.model, layer, role)
        if name == "block_pre":
            return module.register_forward_pre_hook(factory(layer, tower), with_kwargs=True, prepend=True)
        if name.endswith("_pre"):
            return module.register_forward_pre_hook(factory(layer, tower), prepend=True)
        return module.register_forward_hook(factory(layer, tower), prepend=True)

    def _positions(self, x: torch.Tensor) -> torch.Tensor:
        positions = getattr(self._scratch, "positions", None)
        if positions is None or positions.shape[-1] != x.shape[1]:
            return torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        return positions

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        tokens = getattr(self._scratch, "tokens", None)
        if tokens is None or tuple(tokens.shape) != tuple(x.shape[:2]):
            raise InvalidEditError(
                "edits", "an edit that reads the input ids ran where they are not known", "a forward given input_ids"
            )
        return tokens

    def _run(self, groups: tuple[RowGroup, ...], x: torch.Tensor) -> torch.Tensor:
        """Each group's ops on its rows of ``x`` (activation layout ``[batch, pos, ...]``)."""
        positions = self._positions(x) if any(op.needs_positions for g in groups for op in g.ops) else None
        tokens = self._tokens(x) if any(op.needs_tokens for g in groups for op in g.ops) else None
        for group in groups:
            if group.rows is None:
                x = _run_ops(group.ops, x, positions, group.keys, tokens)
                continue
            part = x.index_select(0, group.rows)
            here = positions if positions is None or positions.shape[0] == 1 else positions[group.rows]
            row_tokens = None if tokens is None else tokens[group.rows]
            x = x.index_copy(0, group.rows, _run_ops(group.ops, part, here, group.keys, row_tokens))
        return x

    # -- hook factories (one per unit kind) ---------------------------------------------------
    def _hook_block_pre(self, layer: int, tower: str) -> Callable[..., Any]:
        site = Site(layer, "hook_resid_pre", tower)

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            stack = self._active.get()
            if stack is None:
                return None
            if not tower and layer in stack.position_layers:
                self._scratch.positions = kwargs.get("position_ids")
            ops = stack.groups.get(site)
            if not ops:
                return None
            if args:
                return (self._run(ops, args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": self._run(ops, kwargs["hidden_states"])}

        return hook

    def _forget_tokens(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._scratch.tokens = None

    def _hook_embed(self) -> Callable[..., Any]:
        """Records the input ids for ops that read them, then runs ``hook_embed``'s ops."""
        edit = self._output_hook(Site(-1, "hook_embed"))

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            stack = self._active.get()
            if stack is not None and stack.needs_tokens:
                self._scratch.tokens = args[0]
            return edit(module, args, output)

        return hook

    def _hook_block_post(self, layer: int, tower: str) -> Callable[..., Any]:
        return self._output_hook(Site(layer, "hook_resid_post", tower))

    def _output_hook(self, site: Site) -> Callable[..., Any]:
        """Edits a module's output (the first element when it returns a tuple)."""

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            stack = self._active.get()
            ops = stack.groups.get(site) if stack is not None else None
            if not ops:
                return None
            if isinstance(output, tuple):
                return (self._run(ops, output[0]), *output[1:])
            return self._run(ops, output)

        return hook

    def _hook_mid_pre(self, layer: int, tower: str) -> Callable[..., Any]:
        site = Site(layer, "hook_resid_mid", tower)

        def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            stack = self._active.get()
            ops = stack.groups.get(site) if stack is not None else None
            if not ops:
                return None
            edited = self._run(ops, args[0])
            # the residual carried past the MLP is the unedited input; the MLP hook adds the change
            self._scratch.__dict__[f"{tower}mid{layer}"] = edited - args[0]
            return (edited, *args[1:])

        return hook

    def _hook_mlp_post(self, layer: int, tower: str) -> Callable[..., Any]:
        mid = Site(layer, "hook_resid_mid", tower)
        out = Site(layer, "hook_mlp_out", tower)
        key = f"{tower}mid{layer}"

        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            stack = self._active.get()
            if stack is None:
                return None
            ops = stack.groups.get(out)
            if ops:
                output = self._run(ops, output)
            if mid in stack.groups:
                output = output + self._scratch.__dict__.pop(key)
            return output

        return hook

    def _hook_attn_post(self, layer: int, tower: str) -> Callable[..., Any]:
        return self._output_hook(Site(layer, "hook_attn_out", tower))

    def _hook_z_pre(self, layer: int, tower: str) -> Callable[..., Any]:
        site = Site(layer, "attn.hook_z", tower)
        dims = self.dims.at(site)
        return self._activation_pre_hook(site, (dims.n_heads, dims.d_head))

    def _hook_neurons_pre(self, layer: int, tower: str) -> Callable[..., Any]:
        return self._activation_pre_hook(Site(layer, "mlp.hook_post", tower))

    def _activation_pre_hook(self, site: Site, split_last: tuple[int, int] | None = None) -> Callable[..., Any]:
        """Edits a module's input; ``split_last`` views its last dimension as ``(heads, d_head)``."""

        def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            stack = self._active.get()
            ops = stack.groups.get(site) if stack is not None else None
            if not ops:
                return None
            x = args[0]
            if split_last is None:
                return (self._run(ops, x), *args[1:])
            edited = self._run(ops, x.reshape(*x.shape[:-1], *split_last))
            return (edited.reshape(x.shape), *args[1:])

        return hook

    def _hook_qkv(self, layer: int, which: int, tower: str) -> Callable[..., Any]:
        """Edits the queries (0), keys (1) or values (2) in the projection's output, per head."""
        site = Site(layer, QKV_POINTS[which], tower)
        layout, d_head = self.adapter.tower(tower).qkv_layout, self.dims.at(site).d_head

        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            stack = self._active.get()
            ops = stack.groups.get(site) if stack is not None else None
            if not ops:
                return None
            if layout == "separate":  # its own projection: all of the output
                return self._run(ops, output.reshape(*output.shape[:-1], -1, d_head)).reshape(output.shape)
            if layout == "gpt2":  # [q | k | v], each d_model wide
                width = output.shape[-1] // 3
                part = output[..., which * width : (which + 1) * width]
                edited = self._run(ops, part.reshape(*part.shape[:-1], -1, d_head)).reshape(part.shape)
                return torch.cat([output[..., : which * width], edited, output[..., (which + 1) * width :]], dim=-1)
            per_head = output.reshape(*output.shape[:-1], -1, 3 * d_head)  # neox: each head [q | k | v]
            part = per_head[..., which * d_head : (which + 1) * d_head]
            edited = self._run(ops, part)
            fused = torch.cat([per_head[..., : which * d_head], edited, per_head[..., (which + 1) * d_head :]], dim=-1)
            return fused.reshape(output.shape)

        return hook

    def _hook_weight(self, site: Site) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            stack = self._active.get()
            groups = stack.groups.get(site) if stack is not None else None
            if not groups:
                return None
            x = args[0]
            for group in groups:
                if group.rows is None:
                    for op in group.ops:
                        output = op.fn(x, output)
                    continue
                part_x, part_y = x.index_select(0, group.rows), output.index_select(0, group.rows)
                for op in group.ops:
                    part_y = op.fn(part_x, part_y)
                output = output.index_copy(0, group.rows, part_y)
            return output

        return hook


def _fuse(groups: list[RowGroup], batch: int) -> tuple[RowGroup, ...]:
    """The site's groups as one group over every row where each is one op of a shared plain form
    (:mod:`editors.fusion`); as they are otherwise."""
    if len(groups) == 1 and groups[0].rows is None:  # one stack over every row: nothing to gather
        return tuple(groups)
    if any(len(group.ops) != 1 for group in groups):
        return tuple(groups)
    op = fused_op([group.ops[0] for group in groups], [group.rows for group in groups], batch)  # type: ignore[misc]
    return tuple(groups) if op is None else (RowGroup((op,)),)


def _run_ops(
    ops: tuple[Op, ...],
    x: torch.Tensor,
    positions: torch.Tensor | None,
    keys: torch.Tensor | None,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    for op in ops:
        if op.needs_tokens:
            x = op.fn(x, positions, tokens)
        elif op.needs_rows:
            x = op.fn(x, positions, keys if keys is not None else torch.arange(x.shape[0], device=x.device))
        else:
            x = op.fn(x, positions)
    return x


def _recorder(
    cache: dict[str, Any],
    name: str,
    every_forward: bool = False,
    keep_grad: bool = False,
    seen: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """An op that stores the activation (or ``seen`` of it: an SAE's view) under ``name``."""

    def record(x: torch.Tensor, positions: Any) -> torch.Tensor:
        value = x if seen is None else seen(x)
        value = value if keep_grad else value.detach()
        if every_forward:
            cache[name].append(value)
        else:
            cache[name] = value
        return x

    return record


def _user_hook(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def run(x: torch.Tensor, positions: Any) -> torch.Tensor:
        replaced = fn(x)
        return x if replaced is None else replaced

    return run
