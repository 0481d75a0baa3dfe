"""Scalpel's surgery kit: edit kinds, the hook dispatcher and architecture adapters.

A plain PyTorch / transformers library, usable from a notebook with no server and no database::

    from editors import Surgeon, Steering
    surgeon = Surgeon(model)
    with surgeon.apply([Steering(site="blocks.2.hook_resid_pre", vector=v, scale=4.0)]):
        out = model(ids)

Names resolve on first use (PEP 562), so ``import editors.errors`` or the ``scalpel`` CLI's client
commands never pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from editors.adapters import ADAPTERS, ArchitectureAdapter, ModelDims, adapter_for, supported_model_types
    from editors.edits import (
        DirectionalAblation,
        Edit,
        HeadAblation,
        LowRank,
        NeuronAblation,
        Steering,
        edit_from_parts,
        edit_kinds,
    )
    from editors.errors import InvalidEditError, UnsupportedArchitectureError
    from editors.feature_edits import FeatureAblation, FeatureClamp, FeatureSteering
    from editors.fingerprint import weights_sha256
    from editors.sae import SparseAutoencoder, load_sae
    from editors.serialization import artifact_blobs_by_hash, edit_from_json, load_edit, save_edit
    from editors.sites import Site
    from editors.stats import ActivationStats, activation_stats, head_ablation, neuron_ablation
    from editors.steering import derive_steering
    from editors.surgeon import EditStack, RowStacks, Surgeon
    from editors.vision import ImageTokenAblation

#: public name → the module that defines it
_HOMES = {
    "ADAPTERS": "editors.adapters",
    "ActivationStats": "editors.stats",
    "ArchitectureAdapter": "editors.adapters",
    "DirectionalAblation": "editors.edits",
    "Edit": "editors.edits",
    "EditStack": "editors.surgeon",
    "FeatureAblation": "editors.feature_edits",
    "FeatureClamp": "editors.feature_edits",
    "FeatureSteering": "editors.feature_edits",
    "HeadAblation": "editors.edits",
    "ImageTokenAblation": "editors.vision",
    "InvalidEditError": "editors.errors",
    "LowRank": "editors.edits",
    "ModelDims": "editors.adapters",
    "NeuronAblation": "editors.edits",
    "RowStacks": "editors.surgeon",
    "Site": "editors.sites",
    "SparseAutoencoder": "editors.sae",
    "Steering": "editors.edits",
    "Surgeon": "editors.surgeon",
    "UnsupportedArchitectureError": "editors.errors",
    "activation_stats": "editors.stats",
    "adapter_for": "editors.adapters",
    "artifact_blobs_by_hash": "editors.serialization",
    "derive_steering": "editors.steering",
    "edit_from_json": "editors.serialization",
    "edit_from_parts": "editors.edits",
    "edit_kinds": "editors.edits",
    "head_ablation": "editors.stats",
    "load_edit": "editors.serialization",
    "load_sae": "editors.sae",
    "neuron_ablation": "editors.stats",
    "save_edit": "editors.serialization",
    "supported_model_types": "editors.adapters",
    "weights_sha256": "editors.fingerprint",
}

__all__ = [
    "ADAPTERS",
    "ActivationStats",
    "ArchitectureAdapter",
    "DirectionalAblation",
    "Edit",
    "EditStack",
    "FeatureAblation",
    "FeatureClamp",
    "FeatureSteering",
    "HeadAblation",
    "ImageTokenAblation",
    "InvalidEditError",
    "LowRank",
    "ModelDims",
    "NeuronAblation",
    "RowStacks",
    "Site",
    "SparseAutoencoder",
    "Steering",
    "Surgeon",
    "UnsupportedArchitectureError",
    "activation_stats",
    "adapter_for",
    "artifact_blobs_by_hash",
    "derive_steering",
    "edit_from_json",
    "edit_from_parts",
    "edit_kinds",
    "head_ablation",
    "load_edit",
    "load_sae",
    "neuron_ablation",
    "save_edit",
    "supported_model_types",
    "weights_sha256",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'editors' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
