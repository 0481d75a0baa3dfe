"""Edits that travel: a version's edits folded into the weights (a model directory any
``transformers`` loader, vLLM or TGI reads), or its rank-limited deltas as a PEFT LoRA adapter (the
per-request format vLLM, TGI and LoRAX serve).

Which edits have an exact weight form (the exported model's logits equal the hooked model's):

- ``low_rank`` (ROME and other rank-limited deltas): ``W += U Vᵀ`` on its module;
- ``head_ablation`` / ``neuron_ablation`` in ``zero`` mode: the output projection's input columns
  of those heads or neurons are zeroed; in ``mean`` mode also ``W[:, units] · means`` is added to
  that projection's bias, so only where it has one (GPT-2, GPT-NeoX; not Llama).

Everything else reads the activations it changes (steering at chosen positions, directional
ablation, resample ablation) or has no exact weight form on every architecture, and is refused,
each edit named with the reason, rather than approximated.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from editors.adapters import adapter_for, weight_delta_as_stored
from editors.edits import Edit, HeadAblation, LowRank, NeuronAblation
from editors.errors import NotExportable
from editors.sites import Site

#: Where an export records where it came from: config.json's key, safetensors metadata keys.
CONFIG_KEY = "scalpel"


def _describe(index: int, edit: Edit) -> str:
    where = getattr(edit, "site", None) or f"layer {getattr(edit, 'layer', '?')}"
    return f"edit {index} ({edit.kind} at {where})"


def _merge_refusal(model: nn.Module, edit: Edit) -> str | None:
    """Why ``edit`` cannot be folded into ``model``'s weights exactly (None: it can)."""
    if isinstance(edit, LowRank):
        return None
    if isinstance(edit, HeadAblation | NeuronAblation):
        if edit.mode == "zero":
            return None
        if edit.mode == "mean":
            role = "attn_out" if isinstance(edit, HeadAblation) else "mlp_out"
            if adapter_for(model).module(model, edit.layer, role).bias is not None:
                return None
            return "a mean ablation needs a bias on the output projection to hold the means; this model has none"
        return "a resample ablation draws a different replacement per position: no weight form"
    return f"{edit.kind} changes activations at run time: no exact weight form (export it with Scalpel's stack)"


@torch.no_grad()
def _fold(model: nn.Module, edit: Edit) -> None:
    adapter = adapter_for(model)
    if isinstance(edit, LowRank):
        module = adapter.weight_module(model, edit.parsed_site)
        delta = (edit.U.double() @ edit.V.double().T).to(module.weight.dtype)
        module.weight += weight_delta_as_stored(module, delta)
        return
    assert isinstance(edit, HeadAblation | NeuronAblation)
    role = "attn_out" if isinstance(edit, HeadAblation) else "mlp_out"
    module = adapter.module(model, edit.layer, role)
    width = adapter.dims(model).d_head if isinstance(edit, HeadAblation) else 1
    columns = torch.tensor([unit * width + i for unit in edit._units() for i in range(width)], dtype=torch.long)
    weight = module.weight if isinstance(module, nn.Linear) else module.weight.T  # a view as [d_out, d_in]
    if edit.mode == "mean":
        means = edit.means.reshape(-1).to(torch.float64)
        module.bias += (weight[:, columns].to(torch.float64) @ means).to(module.bias.dtype)
    weight[:, columns] = 0.0


def merged_model(model: nn.Module, edits: Sequence[Edit]) -> nn.Module:
    """A copy of ``model`` with ``edits`` folded into its weights (see the module docstring); the
    original is untouched. :class:`NotExportable` names every edit without an exact form."""
    refusals = [
        f"{_describe(i, e)}: {reason}" for i, e in enumerate(edits) if (reason := _merge_refusal(model, e)) is not None
    ]
    if refusals:
        raise NotExportable(refusals)
    merged = copy.deepcopy(model)
    for edit in edits:
        _fold(merged, edit)
    return merged


def export_merged(
    model: nn.Module, tokenizer: object, edits: Sequence[Edit], directory: Path, provenance: dict[str, object]
) -> list[Path]:
    """Write the merged model (safetensors) and its tokenizer to ``directory``; ``provenance`` (the
    version's name, its edit ids) goes into config.json under ``scalpel``. Returns the files."""
    merged = merged_model(model, edits)
    setattr(merged.config, CONFIG_KEY, provenance)
    directory.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)  # type: ignore[attr-defined]
    return sorted(p for p in directory.iterdir() if p.is_file())


def lora_tensors(model: nn.Module, edits: Sequence[Edit]) -> tuple[dict[str, torch.Tensor], dict[str, int], bool]:
    """The ``low_rank`` edits as LoRA factors, keyed as PEFT saves them, the rank of each target
    module (several edits on one module stack their ranks), and whether the modules store their
    weight transposed (GPT-2's ``Conv1D``: PEFT's ``fan_in_fan_out``)."""
    refusals = [
        f"{_describe(i, e)}: a LoRA adapter carries only low_rank edits (merge the weights instead)"
        for i, e in enumerate(edits)
        if not isinstance(e, LowRank)
    ]
    if refusals:
        raise NotExportable(refusals)
    adapter = adapter_for(model)
    names = {id(module): name for name, module in model.named_modules()}
    factors: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    transposed = set()
    for edit in edits:
        assert isinstance(edit, LowRank)
        module = adapter.weight_module(model, Site.parse(edit.site))
        transposed.add(not isinstance(module, nn.Linear))
        a, b = factors.setdefault(names[id(module)], ([], []))
        a.append(edit.V.T.float())  # lora_A: [r, d_in]
        b.append(edit.U.float())  # lora_B: [d_out, r]; y += B (A x)
    if len(transposed) > 1:
        raise NotExportable(["the edited modules mix Linear and Conv1D layouts: one adapter cannot hold both"])
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, (a, b) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.cat(a, dim=0).contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.cat(b, dim=1).contiguous()
        ranks[name] = sum(t.shape[0] for t in a)
    return tensors, ranks, transposed == {True}


def export_lora(
    model: nn.Module, edits: Sequence[Edit], directory: Path, base: str, provenance: dict[str, object]
) -> list[Path]:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` for PEFT (scaling 1: each
    module's ``lora_alpha`` equals its rank). ``base`` is the base model's path or hub id."""
    from peft import LoraConfig

    tensors, ranks, fan_in_fan_out = lora_tensors(model, edits)
    top = max(ranks.values(), default=1)
    config = LoraConfig(
        r=top,
        lora_alpha=top,
        target_modules=sorted(ranks),
        rank_pattern=dict(ranks),
        alpha_pattern=dict(ranks),
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
        inference_mode=True,
    )
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    metadata = {"format": "pt", **{f"{CONFIG_KEY}_{key}": json.dumps(value) for key, value in provenance.items()}}
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata=metadata)
    return [directory / "adapter_config.json", directory / "adapter_model.safetensors"]
